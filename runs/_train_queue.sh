# Sourced by runs/issue16_cifar.sh and runs/issue17_cifar10.sh: run NAME FLAGS... trains $OUT/NAME with
# `python -m purify.training.adversarial $common FLAGS` unless its artifact exists. Several copies of a script may
# run at once (one per free core): a model another copy is training is skipped (flock on $OUT/NAME.lock, released
# when that process ends); an interrupted one resumes from $OUT/NAME.pt.
run() {
  name=$1; shift
  [ -f $OUT/$name.json ] && { echo "$name: done"; return; }
  flock -n -E 200 $OUT/$name.lock \
    $PY -m purify.training.adversarial $common --out $OUT/$name --checkpoint $OUT/$name.pt "$@" --resume \
    >> $OUT/$name.nohup 2>&1    # append: a copy that finds the lock must not truncate the running one's console log
  case $? in
    0) echo "$(date +%T) $name: trained" ;;
    200) echo "$name: training in another copy of this script, skipped" ;;
    *) echo "$name: FAILED (see $OUT/$name.nohup)" ;;
  esac
}
