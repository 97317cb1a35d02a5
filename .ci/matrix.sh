#!/usr/bin/env bash
# .ci/matrix.sh -- the interpreter x requests/urllib3 matrix for munsit_progress.
#
# usage: bash .ci/matrix.sh REPO_DIR [WORK_DIR]
#
# For every row: fresh `python -m venv`, install the package under test from a
# clean snapshot of the repo with `pip install "<snapshot>[test]"` (pinned rows
# pass their pins in the same pip command), then run the repo's test file with
# pytest against the INSTALLED module and collect the pass count (without the
# tests marked slow, the batch's SIGKILL-and-rerun runs, which .ci/run's README
# step runs once). The "vendored" row copies munsit_progress.py alone into an empty folder, next to
# the test file, with only requests (+ pytest, hypothesis) installed.
#
# env: JOBS=3            rows run in parallel (the tests mostly wait on sockets
#                        and timers: three rows keep 2 cores busy without
#                        starving the timing tests)
#      PYENV_ROOT        default: $(pyenv root)
#      KEEP_WORK=1       keep WORK_DIR even when everything passed
#      PYTEST_TIMEOUT=600  seconds per pytest run
#
# Exit: 0 all rows OK; 1 some row failed; 2 usage / required interpreter missing.
set -uo pipefail

REPO=${1:?usage: matrix.sh REPO_DIR [WORK_DIR]}
REPO=$(cd "$REPO" && pwd) || exit 2
WORK=${2:-$(mktemp -d /tmp/matrix-run.XXXXXX)}
JOBS=${JOBS:-3}
PYTEST_TIMEOUT=${PYTEST_TIMEOUT:-600}
PYENV_ROOT=${PYENV_ROOT:-$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")}
MODULE=munsit_progress
TEST_FILE=test_munsit_progress.py
REQUIRED_PYTHONS="3.7 3.13"
export PIP_PROGRESS_BAR=off PIP_DISABLE_PIP_VERSION_CHECK=1

# Every CPython 3.7-3.13 with the newest requests it gets; the oldest pins we
# claim (setup.cfg: requests>=2.22), with the urllib3 1.x of their day; and the
# copied-file case.  The two urllib3 lines stream differently.
# name              python  pins (whitespace separated; "-" = none, "VENDORED" = vendored row)
ROWS=(
  "py3.7-oldest      3.7     requests==2.22.0 urllib3<1.26"
  "py3.7             3.7     -"
  "py3.8             3.8     -"
  "py3.9             3.9     -"
  "py3.10            3.10    -"
  "py3.10-req2.25    3.10    requests==2.25.1 urllib3==1.26.*"
  "py3.11            3.11    -"
  "py3.12            3.12    -"
  "py3.13-urllib3v2  3.13    urllib3>=2"
  "vendored-py3.9    3.9     VENDORED"
)

die() { echo "ERROR: $*" >&2; exit 2; }
log() { echo "[$(date +%H:%M:%S)] $*"; }

# Newest installed pyenv CPython X.Y, e.g. 3.7 -> .../versions/3.7.16/bin/python
find_python() {
  local ver=$1 dir
  dir=$(ls -d "$PYENV_ROOT/versions/$ver".* 2>/dev/null | sort -V | tail -n1)
  [[ -n $dir && -x $dir/bin/python ]] && echo "$dir/bin/python"
}

check_required_pythons() {
  local v missing=0
  for v in $REQUIRED_PYTHONS; do
    if ! find_python "$v" >/dev/null; then
      echo "!!! REQUIRED interpreter Python $v not found under $PYENV_ROOT/versions" >&2
      missing=1
    fi
  done
  ((missing == 0)) || die "required interpreters missing (install with: pyenv install 3.7 / 3.13)"
}

# Copy the repo without VCS/build debris. Every row gets its own copy because
# pip builds in-tree: setuptools writes build/ and *.egg-info into the source
# dir, which races between parallel rows and would litter the real repo.
snapshot_repo() {
  local dst=$1
  mkdir -p "$dst"
  tar -C "$REPO" --exclude=.git --exclude=build --exclude='*.egg-info' \
      --exclude=__pycache__ --exclude=.pytest_cache --exclude=.hypothesis \
      --exclude='.venv*' --exclude=dist -cf - . | tar -C "$dst" -xf -
}

# Writes "$dir/result": name<TAB>python<TAB>requests<TAB>urllib3<TAB>passed<TAB>failed<TAB>status
run_row() {
  local name=$1 pyver=$2 pins_str=$3
  local dir=$WORK/$name venv=$WORK/$name/venv
  local out=$dir/log.txt py pip_rc test_path run_dir pins=()
  mkdir -p "$dir"
  result() { printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$1" "$2" "$3" "$4" "$5" "$6" >"$dir/result"; }

  py=$(find_python "$pyver") || { result "$pyver" - - 0 0 SKIP-no-python; return; }
  "$py" -m venv "$venv" >>"$out" 2>&1 || { result "$pyver" - - 0 0 FAIL-venv; return; }
  local vpy=$venv/bin/python

  if [[ $pins_str == VENDORED ]]; then
    run_dir=$dir/vendored
    mkdir -p "$run_dir"
    cp "$REPO/$MODULE.py" "$REPO/$TEST_FILE" "$run_dir/" || { result "$pyver" - - 0 0 FAIL-copy; return; }
    # Nothing of the package may be installed: the copied file must stand alone.
    "$vpy" -m pip install requests pytest hypothesis >>"$out" 2>&1
    pip_rc=$?
    test_path=$run_dir/$TEST_FILE
  else
    [[ $pins_str == - ]] || read -r -a pins <<<"$pins_str"   # read -a: no glob expansion of 1.26.*
    snapshot_repo "$dir/src"
    "$vpy" -m pip install "${pins[@]}" "$dir/src[test]" >>"$out" 2>&1
    pip_rc=$?
    run_dir=$dir                     # cwd outside the repo
    test_path=$REPO/$TEST_FILE
  fi
  local full_py req u3
  full_py=$("$vpy" -c 'import platform; print(platform.python_version())' 2>/dev/null || echo "$pyver")
  if ((pip_rc != 0)); then result "$full_py" - - 0 0 FAIL-install; return; fi
  "$vpy" -m pip check >>"$out" 2>&1 || { result "$full_py" - - 0 0 FAIL-pip-check; return; }

  req=$("$vpy" -c 'import requests; print(requests.__version__)' 2>"$dir/import-warnings.txt") || req='?'
  u3=$("$vpy" -c 'import urllib3; print(urllib3.__version__)' 2>/dev/null) || u3='?'
  if grep -q RequestsDependencyWarning "$dir/import-warnings.txt"; then
    result "$full_py" "$req" "$u3" 0 0 FAIL-dep-warning; return
  fi

  # --import-mode=importlib + cwd outside the repo: tests import the INSTALLED
  # module, not $REPO/munsit_progress.py (default "prepend" mode would put the
  # test file's dir on sys.path and silently test the checkout instead).
  # PYTHONDONTWRITEBYTECODE keeps __pycache__ out of the repo; running from
  # $run_dir keeps hypothesis' .hypothesis/ database out of it too.
  local import_mode=() rc
  [[ $pins_str == VENDORED ]] || import_mode=(--import-mode=importlib)
  (cd "$run_dir" && PYTHONDONTWRITEBYTECODE=1 timeout "$PYTEST_TIMEOUT" \
      "$vpy" -m pytest -q -p no:cacheprovider -m "not slow" "${import_mode[@]}" "$test_path") >"$dir/pytest.txt" 2>&1
  rc=$?
  (cd "$run_dir" && "$vpy" -c "import $MODULE; print('module from', $MODULE.__file__)") >>"$out" 2>&1

  local summary passed failed status
  summary=$(grep -E '[0-9]+ (passed|failed|error)' "$dir/pytest.txt" | tail -n1)
  passed=$(grep -oE '[0-9]+ passed' <<<"$summary" | awk '{s+=$1} END {print s+0}')
  failed=$(grep -oE '[0-9]+ (failed|errors?)' <<<"$summary" | awk '{s+=$1} END {print s+0}')
  case $rc in
    0)   status=OK ;;
    5)   status=FAIL-no-tests ;;
    124) status=FAIL-timeout ;;
    *)   status=FAIL-tests ;;
  esac
  result "$full_py" "$req" "$u3" "${passed:-0}" "${failed:-0}" "$status"
}

run_all() {
  local row name pyver pins running=0
  for row in "${ROWS[@]}"; do
    read -r name pyver pins <<<"$row"
    log "start $name (python $pyver${pins:+, $pins})"
    run_row "$name" "$pyver" "$pins" &
    running=$((running + 1))
    if ((running >= JOBS)); then wait -n; running=$((running - 1)); fi
  done
  wait
}

# Last lines of each existing log, minus this machine's pip-config noise
# ("Location 'file:///opt/pypi-more/simple/...' is ignored").
show_tail() {
  local f
  for f in "$@"; do
    [[ -f $f ]] || continue
    echo "--- $f"
    grep -v 'is ignored: it is neither a file nor a directory' "$f" | tail -n 25
  done
}

print_summary() {
  local row name any_fail=0 tot_pass=0 tot_fail=0 f
  echo
  {
    printf 'ROW\tPYTHON\tREQUESTS\tURLLIB3\tPASSED\tFAILED\tSTATUS\n'
    for row in "${ROWS[@]}"; do
      read -r name _ <<<"$row"
      f=$WORK/$name/result
      if [[ -f $f ]]; then cat "$f"; else printf '%s\t-\t-\t-\t0\t0\tFAIL-no-result\n' "$name"; fi
    done
  } | tee "$WORK/summary.tsv" | column -t -s $'\t'
  echo
  while IFS=$'\t' read -r name _ _ _ p fl st; do
    [[ $name == ROW ]] && continue
    tot_pass=$((tot_pass + p)); tot_fail=$((tot_fail + fl))
    case $st in
      OK) ;;
      SKIP-*) echo "warning: $name skipped ($st)" >&2 ;;
      *) any_fail=1
         echo "===== $name: $st -- tail of logs ($WORK/$name) =====" >&2
         if [[ $st == FAIL-tests || $st == FAIL-timeout || $st == FAIL-no-tests ]]; then
           show_tail "$WORK/$name/pytest.txt" >&2
         else
           show_tail "$WORK/$name/log.txt" "$WORK/$name/import-warnings.txt" >&2
         fi ;;
    esac
  done <"$WORK/summary.tsv"
  # one word + colon + "N passed, N failed": the plain closing line CI reads
  echo "matrix: $tot_pass passed, $tot_fail failed"
  return $any_fail
}

main() {
  [[ -f $REPO/$MODULE.py && -f $REPO/$TEST_FILE ]] || die "$REPO lacks $MODULE.py or $TEST_FILE"
  check_required_pythons
  mkdir -p "$WORK"
  log "repo=$REPO work=$WORK jobs=$JOBS"
  local t0=$SECONDS
  run_all
  log "all rows done in $((SECONDS - t0))s"
  if print_summary; then
    [[ ${KEEP_WORK:-0} == 1 ]] || rm -rf "$WORK"
    exit 0
  fi
  echo "MATRIX FAILED (logs kept in $WORK)" >&2
  exit 1
}

main "$@"
