#!/bin/bash
# A real single-node Slurm (Debian 12 packages, daemons started by hand, no systemd; recipe in
# ../shared/slurm-single-node.md) runs the sbatch script `sdseg-volume slurm-script` prints, as
# a 3-task job array over small synthetic volumes; every output must equal (cmp) the output of
# one single-process `run`, and a resubmission must skip everything (resume).
#
# Usage (as root, from the repository root):  .ci/slurm-test.sh [path/to/sdseg-volume]
#   default binary: $SDSEG_BIN, else target/release/sdseg-volume
# Model: SDSEG_SLURM_MODEL=fixture uses the tiny fixture checkpoint
#   (testdata/fixtures/tiny-binary/checkpoint.ckpt + config.json); =fake uses the
#   threshold test model; =auto (default) uses the fixture when this build can load it and
#   says so loudly when it falls back to the test model.
# Volumes: `sdseg-volume phantom --format nifti` when the binary has it, else nibabel from
#   $SDSEG_PYTHON.
# Daemons are stopped by PID on exit, whatever happens.
set -euo pipefail
T0=$(date +%s)
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=$(realpath "${1:-${SDSEG_BIN:-$ROOT/target/release/sdseg-volume}}")
PY=${SDSEG_PYTHON:-python3}
MODE=${SDSEG_SLURM_MODEL:-auto}
FIX=$ROOT/testdata/fixtures/tiny-binary
SLURM_TMP=/tmp/slurm-sdseg-ci
WORK=$(mktemp -d /tmp/sdseg-slurm-test.XXXXXX)
export DEBIAN_FRONTEND=noninteractive
[ -x "$BIN" ] || { echo "slurm-test: no binary at $BIN (cargo build --release first)"; exit 1; }
[ "$(id -u)" = 0 ] || { echo "slurm-test: needs root (apt-get, slurmctld, slurmd, munged)"; exit 1; }

# --- stop what we started, on any exit ---------------------------------------------------
stop_pid() {  # $1 = pid file
  [ -s "$1" ] || return 0
  local pid; pid=$(cat "$1")
  kill -TERM "$pid" 2>/dev/null || return 0
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.2; done
  echo "slurm-test: pid $pid ($1) did not stop"
}
STARTED_MUNGE=0
cleanup() {
  local rc=$?
  stop_pid "$SLURM_TMP/slurmd.pid"
  stop_pid "$SLURM_TMP/slurmctld.pid"
  [ "$STARTED_MUNGE" = 1 ] && stop_pid /run/munge/munged.pid
  if [ "$rc" != 0 ]; then
    echo "slurm-test: FAILED (rc=$rc); daemon logs:"
    tail -n 20 "$SLURM_TMP"/log/*.log 2>/dev/null || true
    for f in "$WORK"/array/logs/*.log; do [ -f "$f" ] && { echo "== $f"; tail -n 20 "$f"; }; done
  fi
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT

# --- 1. install (keep the packages' init scripts from starting daemons) ------------------
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null || ! command -v sbatch >/dev/null; then
  added_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d
    added_policy=1
  fi
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends munge slurmctld slurmd slurm-client >/dev/null
  [ "$added_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
fi
T_INST=$(date +%s)

# --- 2. munge ------------------------------------------------------------------------------
[ -s /etc/munge/munge.key ] || mungekey --create --force
chown munge:munge /etc/munge/munge.key; chmod 0400 /etc/munge/munge.key
mkdir -p /run/munge && chown munge:munge /run/munge && chmod 0755 /run/munge
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  runuser -u munge -- /usr/sbin/munged
  STARTED_MUNGE=1
  munge -n | unmunge >/dev/null
fi

# --- 3. slurm.conf + daemons ---------------------------------------------------------------
rm -rf "$SLURM_TMP"; mkdir -p "$SLURM_TMP"/{ctld,d,log} /etc/slurm
cat > /etc/slurm/slurm.conf <<EOF
ClusterName=ci
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
ReturnToService=2
StateSaveLocation=$SLURM_TMP/ctld
SlurmdSpoolDir=$SLURM_TMP/d
SlurmctldPidFile=$SLURM_TMP/slurmctld.pid
SlurmdPidFile=$SLURM_TMP/slurmd.pid
SlurmctldLogFile=$SLURM_TMP/log/slurmctld.log
SlurmdLogFile=$SLURM_TMP/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$(nproc) RealMemory=1000 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
slurmctld
slurmd -N localhost
state=
for _ in $(seq 1 60); do
  state=$(sinfo -h -n localhost -o '%t' 2>/dev/null || true)
  [ "$state" = idle ] && break
  sleep 1
done
[ "$state" = idle ] || { echo "slurm-test: node not idle (state='$state')"; exit 1; }
T_UP=$(date +%s)

# --- 4. data: three small synthetic CT volumes ---------------------------------------------
mkdir -p "$WORK/data"
sizes=(48x40x4 40x52x3 56x44x5)
if "$BIN" --quiet phantom --format nifti --size 8x8x2 --out "$WORK/ph-probe" >/dev/null 2>&1; then
  for i in 0 1 2; do
    "$BIN" --quiet phantom --format nifti --size "${sizes[$i]}" --seed "$i" --out "$WORK/ph$i" >/dev/null
    mv "$WORK/ph$i/phantom.nii.gz" "$WORK/data/vol$i.nii.gz"
  done
else
  "$PY" - "$WORK/data" <<'EOF'
import sys, numpy as np, nibabel as nib
out = sys.argv[1]
for i, shape in enumerate([(48, 40, 4), (40, 52, 3), (56, 44, 5)]):
    x, y, z = np.indices(shape, dtype=np.float32)
    c = np.array(shape, dtype=np.float32) * [0.4 + 0.05 * i, 0.5, 0.5]
    d = np.sqrt((x - c[0]) ** 2 + (y - c[1]) ** 2 + (3 * (z - c[2])) ** 2)
    vol = np.where(d < min(shape[:2]) / 3, 150 + (3 * x + y) % 50, -300 + 2 * y).astype(np.int16)
    aff = np.diag([-0.8 if i % 2 else 0.8, -0.8 if i % 2 else 0.8, 2.5, 1.0])
    aff[:3, 3] = [-100, 50, 10 * i]
    nib.save(nib.Nifti1Image(vol, aff), f"{out}/vol{i}.nii.gz")
EOF
fi

# --- 5. the model --------------------------------------------------------------------------
# --pipeline btcv: the tiny fixture is a 256² model (run's default pipeline is the 64² demo).
FIXTURE=(--weights "$FIX/checkpoint.ckpt" --model-config "$FIX/config.json" --pipeline btcv)
FAKE=(--test-segmenter threshold --pipeline btcv)
case "$MODE" in
  fixture) MODEL=("${FIXTURE[@]}") ;;
  fake) MODEL=("${FAKE[@]}") ;;
  auto)
    if probe=$("$BIN" --quiet run "$WORK/data/vol0.nii.gz" --out "$WORK/probe.nii.gz" "${FIXTURE[@]}" 2>&1); then
      MODEL=("${FIXTURE[@]}")
    elif grep -q "not part of this build" <<<"$probe"; then
      echo "slurm-test: NOTE: the SDSeg model is not wired into this build; using the threshold test model"
      MODEL=("${FAKE[@]}")
    else
      echo "slurm-test: the fixture model failed on a probe volume:"; echo "$probe"; exit 1
    fi ;;
  *) echo "slurm-test: SDSEG_SLURM_MODEL must be auto, fixture or fake"; exit 1 ;;
esac
echo "slurm-test: model flags: ${MODEL[*]}"

# --- 6. reference: one process -------------------------------------------------------------
"$BIN" --quiet run "$WORK/data" --out "$WORK/single" "${MODEL[@]}" --batch-size 2 --seed 7

# --- 7. the job array ----------------------------------------------------------------------
"$BIN" slurm-script --data "$WORK/data" --out "$WORK/array" --array 3 --cpus-per-task 1 \
  --mem 500M --time 00:10:00 --partition debug --job-name sdseg-ci \
  "${MODEL[@]}" --batch-size 3 --seed 7 --report "$WORK/array/reports/run-{shard}.json" \
  > "$WORK/job.sh"
echo "slurm-test: generated script:"; sed 's/^/  | /' "$WORK/job.sh"
cd "$WORK"
sbatch --wait job.sh
n=0
for f in "$WORK"/single/*.nii.gz; do
  cmp "$f" "$WORK/array/$(basename "$f")"
  n=$((n + 1))
done
[ "$n" = 3 ] || { echo "slurm-test: expected 3 outputs, got $n"; exit 1; }
[ "$(ls "$WORK"/array/*.nii.gz | wc -l)" = 3 ] || { echo "slurm-test: extra outputs in array/"; exit 1; }
for t in 0 1 2; do
  ls "$WORK"/array/logs/sdseg-ci_*_"$t".log >/dev/null
  [ -s "$WORK/array/reports/run-$t.json" ] || { echo "slurm-test: no report for task $t"; exit 1; }
done
written=$(cat "$WORK"/array/reports/run-*.json | grep -c '"status": "written"')
[ "$written" = 3 ] || { echo "slurm-test: $written cases written across tasks, expected 3"; exit 1; }
echo "slurm-test: 3 array tasks wrote 3 outputs, identical to the single-process run"

# --- 8. resubmit: everything is skipped, nothing changes -----------------------------------
sums=$(sha256sum "$WORK"/array/*.nii.gz)
sbatch --wait job.sh
[ "$(sha256sum "$WORK"/array/*.nii.gz)" = "$sums" ] || { echo "slurm-test: resubmission changed outputs"; exit 1; }
skipped=$(cat "$WORK"/array/reports/run-*.json | grep -c '"status": "skipped"')
[ "$skipped" = 3 ] || { echo "slurm-test: resubmission skipped $skipped cases, expected 3"; exit 1; }
T_END=$(date +%s)
echo "slurm-test: OK (install $((T_INST - T0)) s, daemons $((T_UP - T_INST)) s, jobs $((T_END - T_UP)) s)"
