# Sourced by the study queues (scripts/model_study.sh, scripts/svg_study.sh): several
# queues, one a CPU core, share one list of runs, each run claimed with a lock.
#
#   claim FILE || continue     take FILE's lock for this queue, or say another queue holds it
#   train_or_resume FILE CMD…  run CMD (a vae train command line) unless FILE is complete,
#                              with --resume when FILE exists
#   release                    give the lock back

run_status() { python3 -c "import vaecli.runfile as r, sys; print(r.read(sys.argv[1]).attrs['status'])" "$1"; }

claim() {
  exec {lock}>"$1.lock"
  if ! flock -n "$lock"; then
    echo "-- $1: another queue holds it"
    exec {lock}>&-
    return 1
  fi
}

release() { exec {lock}>&-; }

train_or_resume() {
  local file="$1"
  shift
  [[ -f "$file" && "$(run_status "$file")" == complete ]] && return 0
  local resume=()
  [[ -f "$file" ]] && resume=(--resume)
  echo "== $(date -u +%FT%TZ) training $file on core ${core:-?}"
  "$@" "${resume[@]}"
}
