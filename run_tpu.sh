#!/usr/bin/env bash
# Pretrain (or fine-tune) uniter_jax on a Cloud TPU VM slice.
#
#   ./run_tpu.sh --name uniter-v4 --zone us-central2-b --accelerator v4-32 \
#       --workdir gs://MY_BUCKET/uniter/base-run1 \
#       [--config configs/pretrain.py] [--project P] [--version V] [--spot] \
#       [--keep] [--dry-run] [-- --config.data.images=gs://... more main.py flags]
#
# 1. creates the slice, or reuses a READY TPU VM of that name (a preempted or
#    terminated one is deleted and created again; one in any other state stops
#    the script, naming the state);
# 2. copies this checkout (git archive of HEAD) to every worker and installs it
#    into ~/uniter_jax/.venv with jax's TPU wheel, on Python 3.11 or newer
#    (the image's python3 if new enough, else python3.11 from apt);
# 3. starts main.py on every worker at once (jax finds the other workers by
#    itself), streaming all workers' output here and into ~/uniter_jax/main.log;
#    the script exits with main.py's status;
# 4. deletes the slice afterwards if this script created it (not with --keep).
# Checkpoints and logs go to --workdir, which must be a gs:// path that every
# worker can write. A preempted run resumes from there: run the script again.
# --dry-run prints every gcloud command instead of running it.
set -euo pipefail

usage() {
  sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'
  exit "${1:-0}"
}

die() {
  echo "run_tpu.sh: $*" >&2
  exit 2
}

NAME="" ZONE="" ACCELERATOR="" WORKDIR="" PROJECT=""
CONFIG="configs/pretrain.py"
VERSION="tpu-ubuntu2204-base"
JAX_VERSION="0.10.2"
SPOT=0 KEEP=0 DRY_RUN=0
EXTRA=()

while (($#)); do
  case "$1" in
    --name) NAME="${2:?--name needs a value}"; shift 2 ;;
    --zone) ZONE="${2:?--zone needs a value}"; shift 2 ;;
    --accelerator) ACCELERATOR="${2:?--accelerator needs a value}"; shift 2 ;;
    --workdir) WORKDIR="${2:?--workdir needs a value}"; shift 2 ;;
    --config) CONFIG="${2:?--config needs a value}"; shift 2 ;;
    --project) PROJECT="${2:?--project needs a value}"; shift 2 ;;
    --version) VERSION="${2:?--version needs a value}"; shift 2 ;;
    --spot) SPOT=1; shift ;;
    --keep) KEEP=1; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h | --help) usage 0 ;;
    --) shift; EXTRA=("$@"); break ;;
    *) echo "run_tpu.sh: unknown argument $1" >&2; usage 2 ;;
  esac
done

[[ -n "$NAME" ]] || die "--name is required"
[[ -n "$ZONE" ]] || die "--zone is required"
[[ -n "$ACCELERATOR" ]] || die "--accelerator is required (e.g. v4-32, v5litepod-16)"
[[ -n "$WORKDIR" ]] || die "--workdir is required"
[[ "$WORKDIR" == gs://* ]] || die "--workdir must be a gs:// path all workers share, got $WORKDIR"
[[ -f "${CONFIG%%:*}" ]] || die "no config file ${CONFIG%%:*}"

# Prints a command, then runs it unless this is a dry run.
run() {
  printf '+'
  printf ' %q' "$@"
  printf '\n'
  if ((!DRY_RUN)); then
    "$@"
  fi
}

TPU=(gcloud compute tpus tpu-vm)
WHERE=(--zone "$ZONE")
if [[ -n "$PROJECT" ]]; then
  WHERE+=(--project "$PROJECT")
fi

CREATED=0
teardown() {
  if ((CREATED && !KEEP)); then
    run "${TPU[@]}" delete "$NAME" "${WHERE[@]}" --quiet
  fi
}
trap teardown EXIT

# ---- 1. the slice ------------------------------------------------------------
STATE=""
if ((!DRY_RUN)); then
  STATE=$("${TPU[@]}" describe "$NAME" "${WHERE[@]}" --format='value(state)' 2>/dev/null || true)
fi
case "$STATE" in
  "" | READY) ;;
  PREEMPTED | TERMINATED)
    echo "TPU VM $NAME is $STATE: deleting it to create it again"
    run "${TPU[@]}" delete "$NAME" "${WHERE[@]}" --quiet
    STATE=""
    ;;
  *) die "TPU VM $NAME exists in state $STATE: wait until it is READY, or delete it" ;;
esac
if [[ "$STATE" == READY ]]; then
  echo "reusing TPU VM $NAME"
else
  create=("${TPU[@]}" create "$NAME" "${WHERE[@]}" --accelerator-type "$ACCELERATOR" --version "$VERSION")
  if ((SPOT)); then
    create+=(--spot)
  fi
  run "${create[@]}"
  CREATED=1
fi

# ---- 2. the code, on every worker ----------------------------------------------
ARCHIVE="${TMPDIR:-/tmp}/uniter_jax-$NAME-$$.tar.gz"
run git archive --format=tar.gz -o "$ARCHIVE" HEAD
run "${TPU[@]}" scp "$ARCHIVE" "$NAME:uniter_jax.tar.gz" "${WHERE[@]}" --worker=all
run rm -f "$ARCHIVE"
# The default TPU VM images ship Python 3.10; the package needs 3.11.
PYTHON='PY=python3; if ! python3 -c "import sys; sys.exit(sys.version_info < (3, 11))"; then'
PYTHON+=' PY=python3.11; command -v python3.11 >/dev/null || { sudo apt-get update -qq &&'
PYTHON+=' sudo apt-get install -y -qq python3.11 python3.11-venv; }; fi'
INSTALL="set -e; $PYTHON; rm -rf uniter_jax && mkdir uniter_jax && tar xzf uniter_jax.tar.gz -C uniter_jax"
INSTALL+=" && cd uniter_jax && \$PY -m venv .venv && .venv/bin/pip install -q -r requirements.txt"
INSTALL+=" && .venv/bin/pip install -q 'jax[tpu]==$JAX_VERSION'"
run "${TPU[@]}" ssh "$NAME" "${WHERE[@]}" --worker=all --command "$INSTALL"

# ---- 3. the run, on every worker at once ---------------------------------------
MAIN=(.venv/bin/python main.py "--config=$CONFIG" "--workdir=$WORKDIR" "${EXTRA[@]}")
# pipefail: the ssh (and this script) ends with main.py's status, not tee's.
LAUNCH="set -o pipefail; cd uniter_jax && $(printf '%q ' "${MAIN[@]}")2>&1 | tee -a main.log"
run "${TPU[@]}" ssh "$NAME" "${WHERE[@]}" --worker=all --command "$LAUNCH"
