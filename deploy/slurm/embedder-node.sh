#!/usr/bin/env bash
# One node's share of an embedding job: one embedding server per allocated GPU, then a worker
# (`embedder embed`) against those servers and the MongoDB queue. Started by embed-node.sbatch
# or embed-array.sbatch (which `exec` it, so this shell is the job's batch shell and gets
# SLURM's signals); README.md beside it explains every variable.
#
# Signals. SLURM's `--signal=B:USR1@N` reaches this shell only: it is forwarded to the worker
# as SIGTERM (drain: finish what is in flight, mark it, release the leases, exit 0), and if
# the worker is still running EMBEDDER_DRAIN_TIMEOUT + 15 s later it gets a second SIGTERM
# (exit at once; its in-flight docs stay pending). `scancel` and preemption send SIGTERM to
# every process of the job, the worker included, so a TERM here is not forwarded again: a
# second TERM would make the worker exit without draining.
#
# Arguments are passed to `embedder embed` (e.g. `--collection tweets`); everything else can
# come from the worker's EMBEDDER_* variables (`embedder embed --help`).

set -uo pipefail

backend=${EMBEDDER_SLURM_BACKEND:-tei}
read -ra embedder <<<"${EMBEDDER_SLURM_COMMAND:-embedder}"
read -ra server_args <<<"${EMBEDDER_SLURM_SERVER_ARGS:-}"
drain=${EMBEDDER_DRAIN_TIMEOUT:-90}
export EMBEDDER_DRAIN_TIMEOUT=$drain
health_timeout=${EMBEDDER_SLURM_HEALTH_TIMEOUT:-900}
log_dir=${EMBEDDER_SLURM_LOG_DIR:-logs}
task=${SLURM_ARRAY_JOB_ID:-${SLURM_JOB_ID:-local}}_${SLURM_ARRAY_TASK_ID:-0}
# Two tasks sharing a node must not share ports: the job id spreads them.
base_port=${EMBEDDER_SLURM_BASE_PORT:-$((20000 + (${SLURM_JOB_ID:-0} % 1000) * 16))}

say() { printf '%s embedder-node[%s]: %s\n' "$(date -u +%FT%TZ)" "$task" "$*" >&2; }

mkdir -p "$log_dir" || exit 1
say "host $(hostname), backend $backend, restart ${SLURM_RESTART_COUNT:-0}"

IFS=, read -ra gpus <<<"${CUDA_VISIBLE_DEVICES:-}"
servers=${EMBEDDER_SLURM_SERVERS:-${#gpus[@]}}
if [[ $servers -lt 1 ]]; then
  say "no GPU allocated (CUDA_VISIBLE_DEVICES is empty): request them with --gres=gpu:N," \
    "or set EMBEDDER_SLURM_SERVERS"
  exit 2
fi

container=""
if [[ $backend == tei ]]; then
  container=$(command -v apptainer || command -v singularity || true)
  if [[ -z $container ]]; then
    say "backend tei needs apptainer or singularity; without containers use" \
      "EMBEDDER_SLURM_BACKEND=torch"
    exit 2
  fi
fi

server_pids=()
urls=()
worker_pid=""
timer_pid=""

stop_servers() {
  local pid
  for pid in "${server_pids[@]}"; do kill -TERM "$pid" 2>/dev/null; done
  for pid in "${server_pids[@]}"; do wait "$pid" 2>/dev/null; done
  server_pids=()
}
trap stop_servers EXIT

start_server() { # index gpu port
  local i=$1 gpu=$2 port=$3 log="$log_dir/server-${task}-$1.log" tries=0
  # Another process on the port would answer the health check in our server's place: take
  # the next free one.
  while (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
    port=$((port + 1000))
    if ((++tries > 20)); then
      say "no free port from $3 on (in steps of 1000): set EMBEDDER_SLURM_BASE_PORT"
      exit 3
    fi
  done
  case $backend in
  tei)
    # TEI's image (a .sif built with `apptainer build tei.sif docker://ghcr.io/...`, or the
    # docker:// reference itself); models under TEI_DATA, so offline nodes need no hub.
    CUDA_VISIBLE_DEVICES=$gpu "$container" run --nv \
      --bind "${TEI_DATA:-$HOME/.cache/tei}:/data" "${TEI_IMAGE:?set TEI_IMAGE}" \
      --model-id "${TEI_MODEL:-google/embeddinggemma-300m}" --huggingface-hub-cache /data \
      --hostname 127.0.0.1 --port "$port" --max-client-batch-size 32 \
      --max-concurrent-requests 512 --auto-truncate --payload-limit 2000000 \
      "${server_args[@]}" >"$log" 2>&1 &
    ;;
  torch)
    CUDA_VISIBLE_DEVICES=$gpu "${embedder[@]}" serve --backend torch \
      --model-dir "${EMBEDDER_SLURM_MODEL_DIR:?set EMBEDDER_SLURM_MODEL_DIR}" \
      --hostname 127.0.0.1 --port "$port" "${server_args[@]}" >"$log" 2>&1 &
    ;;
  hash)
    "${embedder[@]}" serve --backend hash --hostname 127.0.0.1 --port "$port" \
      "${server_args[@]}" >"$log" 2>&1 &
    ;;
  *)
    say "unknown EMBEDDER_SLURM_BACKEND '$backend' (tei, torch or hash)"
    exit 2
    ;;
  esac
  server_pids+=($!)
  urls+=("http://127.0.0.1:$port")
  say "server $i on GPU ${gpu:-none}, port $port, log $log"
}

for ((i = 0; i < servers; i++)); do
  start_server "$i" "${gpus[i]:-}" $((base_port + i))
done

# Health: every server answers /health before the worker starts; a server that exits, or a
# fleet not up within EMBEDDER_SLURM_HEALTH_TIMEOUT, fails the task (exit 3) with its log.
deadline=$((SECONDS + health_timeout))
for i in "${!urls[@]}"; do
  until curl -fsS -o /dev/null --max-time 5 "${urls[i]}/health" 2>/dev/null; do
    if ! kill -0 "${server_pids[i]}" 2>/dev/null; then
      say "server $i exited before it was healthy:"
      tail -n 20 "$log_dir/server-${task}-$i.log" >&2
      exit 3
    fi
    if ((SECONDS > deadline)); then
      say "server $i not healthy within ${health_timeout}s"
      exit 3
    fi
    sleep 0.5
  done
done
say "${#urls[@]} server(s) healthy: ${urls[*]}"

# shellcheck disable=SC2317  # invoked by the USR1 trap
drain_worker() {
  say "$1: draining the worker (EMBEDDER_DRAIN_TIMEOUT=${drain}s)"
  kill -TERM "$worker_pid" 2>/dev/null
  # The bound: a second TERM makes the worker exit at once if its drain is stuck.
  (sleep $((drain + 15)) && kill -TERM "$worker_pid" 2>/dev/null) &
  timer_pid=$!
}
trap 'drain_worker USR1' USR1
trap 'say "TERM: the worker got it too and drains"' TERM

EMBEDDER_TEI_URLS=$(
  IFS=,
  echo "${urls[*]}"
) EMBEDDER_ONCE=${EMBEDDER_ONCE:-1} "${embedder[@]}" embed "$@" &
worker_pid=$!
# `wait` returns early when a trap runs; keep waiting until the worker has really exited.
while kill -0 "$worker_pid" 2>/dev/null; do wait "$worker_pid"; done
wait "$worker_pid"
rc=$?
[[ -n $timer_pid ]] && kill "$timer_pid" 2>/dev/null
say "worker exited with $rc"
stop_servers
exit "$rc"
