# Sourced by the study queues (scripts/model_study.sh, scripts/svg_study.sh): several
# queues, one a CPU core, share one list of runs, each run claimed with a lock.
#
#   claim FILE || continue     take FILE's lock for this queue, or say another queue holds it
#   train_or_resume FILE CMD…  run CMD (a vae train command line), with --resume when FILE
#                              exists (vae train leaves a complete run made so as it is)
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
  # A file there is always handed to vae train --resume, complete or not: it refuses one made
  # with other settings, and decides with the settings given whether a complete run is done
  # (a longer --epochs or patience trains on).
  local file="$1"
  shift
  local resume=() verb=training
  if [[ -f "$file" ]]; then resume=(--resume); verb=resuming; fi
  echo "== $(date -u +%FT%TZ) $verb $file on core ${core:-?}"
  "$@" "${resume[@]}"
}
