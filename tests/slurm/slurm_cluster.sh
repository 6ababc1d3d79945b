#!/usr/bin/env bash
# A one-node Slurm cluster on this machine for the Slurm launcher's tests (Debian's munge and
# slurm-wlm, as scripts/setup.sh installs them), everything under one folder:
#   slurm_cluster.sh start DIR   writes DIR/slurm.conf and a munge key, starts munged, slurmctld
#                                and slurmd as daemons, waits until the node is idle
#   slurm_cluster.sh stop DIR    stops the daemons DIR's pid files name (and is quiet when none run)
# Clients find the cluster through SLURM_CONF=DIR/slurm.conf. The ports are $DEDPO_SLURM_PORT and
# the next one (default 6917/6918, away from a real Slurm's 6817/6818).
set -euo pipefail
action=${1:-}
dir=${2:-}
[[ ( "$action" == start || "$action" == stop ) && -n "$dir" ]] || {
  echo "usage: slurm_cluster.sh start|stop DIR" >&2
  exit 2
}

# TERM to the daemons the pid files name, all at once (each takes a second or two to shut down),
# then KILL to any still there after 5 s.
stop_daemons() {
  local pids=() pid_file
  for pid_file in "$@"; do
    [[ -s "$pid_file" ]] && pids+=("$(<"$pid_file")")
    rm -f "$pid_file"
  done
  ((${#pids[@]})) || return 0
  kill "${pids[@]}" 2>/dev/null || true
  for _ in $(seq 50); do
    kill -0 "${pids[@]}" 2>/dev/null || return 0
    sleep 0.1
  done
  kill -KILL "${pids[@]}" 2>/dev/null || true
}

if [[ "$action" == stop ]]; then
  # Jobs first, so that no task outlives its slurmd.
  [[ -f "$dir/slurm.conf" ]] && SLURM_CONF=$dir/slurm.conf timeout 5 scancel --full --quiet --user root 2>/dev/null || true
  stop_daemons "$dir/slurmd.pid" "$dir/slurmctld.pid" "$dir/munged.pid"
  exit 0
fi

for program in munged slurmctld slurmd sinfo; do
  command -v "$program" >/dev/null || PATH=$PATH:/usr/sbin
  command -v "$program" >/dev/null || {
    echo "slurm_cluster: $program not found (scripts/setup.sh installs munge, slurmctld, slurmd and slurm-client)" >&2
    exit 1
  }
done
rm -rf "$dir"
mkdir -p "$dir/state" "$dir/spool" "$dir/munge"
chmod 700 "$dir" "$dir/munge"
dir=$(cd "$dir" && pwd)
# Whatever fails from here on leaves no daemon behind.
trap 'echo "slurm_cluster: start failed; logs in $dir" >&2; bash "${BASH_SOURCE[0]}" stop "$dir"' ERR

dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none
chmod 400 "$dir/munge/munge.key"
socket=$dir/munge/munge.socket
munged --force --key-file="$dir/munge/munge.key" --socket="$socket" \
  --pid-file="$dir/munged.pid" --log-file="$dir/munged.log" --seed-file="$dir/munge/seed"

# The node as slurmd sees this machine (its real CPU count and memory).
node=$(slurmd -C | head -n 1)
node_name=$(sed -E 's/^NodeName=([^ ]+).*/\1/' <<<"$node")
port=${DEDPO_SLURM_PORT:-6917}
# No cgroups (a container has none to give): processes are tracked through /proc and tasks are
# not bound; no accounting database (sacct has nothing to say, squeue does).
cat >"$dir/slurm.conf" <<EOF
ClusterName=dedpo-test
SlurmctldHost=$node_name
SlurmctldPort=$port
SlurmdPort=$((port + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$socket
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
MinJobAge=300
$node NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=test Nodes=$node_name Default=YES MaxTime=INFINITE State=UP
EOF
export SLURM_CONF=$dir/slurm.conf
slurmctld -f "$SLURM_CONF"
slurmd -f "$SLURM_CONF"

for _ in $(seq 300); do
  state=$(sinfo --noheader --nodes="$node_name" --format=%t 2>/dev/null || true)
  if [[ "$state" == idle ]]; then
    echo "slurm_cluster: node $node_name idle (SLURM_CONF=$SLURM_CONF)"
    exit 0
  fi
  sleep 0.1
done
echo "slurm_cluster: node $node_name not idle after 30 s (state '${state:-unknown}'); see $dir/*.log" >&2
false
