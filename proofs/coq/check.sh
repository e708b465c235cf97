#!/bin/sh
# Check a Coq project that `ctxpatch prove [NAME|all] --coq DIR` wrote, then show that mutated
# statements are refused and equivalent spellings accepted:
#
#   ctxpatch prove all --coq DIR && proofs/coq/check.sh DIR
#
#   1. every theorems/NAME.v holds, between `Proof.` and `Qed.`, exactly the script it was given:
#      scripts/NAME.ltac of this directory, or scripts/default/block.ltac for a block or multi-layer
#      theorem without one; and DIR/refused/ is empty (coqc accepted every exported theorem);
#   2. no Admitted / admit / Axiom / Parameter / Hypothesis in any .v file of DIR;
#   3. coq_makefile -f _CoqProject -o Makefile.coq && make -f Makefile.coq (from scratch);
#   4. every `Print Assumptions` of the project answers "Closed under the global context";
#   5. each mutant below changes one statement of DIR/theorems/NAME.v (the printer's text, so a
#      mutant that no longer matches it fails the check); coqc must refuse every one;
#   6. each variant below spells one statement differently but equivalently (another tree of the
#      same operations); coqc must accept every one: the scripts do not depend on the printer's tree.
#   A mutant or variant of a theorem that DIR does not hold is skipped, and counted.
#
# Exit 0 when all of it holds. Needs coqc 8.16 and mathcomp 1.15 (ssreflect, algebra, field).
set -eu

HERE=$(cd "$(dirname "$0")" && pwd)
fail() { echo "check.sh: $*" >&2; exit 1; }
[ $# -eq 1 ] && [ -d "$1/theorems" ] || fail "usage: check.sh DIR, DIR a project written by \`ctxpatch prove --coq DIR\`"
DIR=$(cd "$1" && pwd)
cd "$DIR"
FLAGS="-w -notation-overridden,-ambiguous-paths,-redundant-canonical-projection,-projection-no-head-constant"

# --- 1. each theorem's proof is its script; nothing refused
n=0
for f in theorems/*.v; do
  [ -f "$f" ] || fail "no theorem in $DIR/theorems"
  name=$(basename "$f" .v)
  script="$HERE/scripts/$name.ltac"
  if [ ! -f "$script" ]; then
    case "$name" in block_*|multilayer_*) script="$HERE/scripts/default/block.ltac" ;; *) fail "no proof script for $name" ;; esac
  fi
  awk '/^Proof\.$/ { p = 1; next } p && /^Qed\.$/ { exit } p { print }' "$f" > .body.tmp
  cmp -s .body.tmp "$script" || { rm -f .body.tmp; fail "the proof of $name differs from ${script#"$HERE"/}"; }
  n=$((n + 1))
done
rm -f .body.tmp
echo "scripts: $n theorems, each proved by its script verbatim"
if [ -d refused ] && [ -n "$(ls refused)" ]; then
  ls refused/*.log | sed 's|refused/\(.*\)\.log|  refused: \1|'
  fail "coqc refused the theorems above (their files and coqc's answers: $DIR/refused)"
fi

# --- 2. nothing assumed
if grep -nE '\b(Admitted|admit|Axiom|Axioms|Parameter|Parameters|Hypothesis|Hypotheses|Conjecture)\b' ./*.v theorems/*.v; then
  fail "an admission or an axiom (above)"
fi

# --- 3. build, from scratch (a full build prints every Print Assumptions)
coq_makefile -f _CoqProject -o Makefile.coq >/dev/null
make -f Makefile.coq clean >/dev/null 2>&1
start=$(date +%s)
make -f Makefile.coq >make.log 2>&1 || { cat make.log; fail "coqc refused the project (make.log)"; }
echo "coqc: project checked in $(($(date +%s) - start)) s"

# --- 4. Print Assumptions
printed=$(cat ./*.v theorems/*.v | grep -c '^Print Assumptions' || true)
closed=$(grep -c 'Closed under the global context' make.log || true)
[ "$printed" -eq "$closed" ] || { cat make.log; fail "$closed of $printed Print Assumptions closed"; }
echo "Print Assumptions: $closed of $printed closed under the global context"

# --- 5. mutants: NAME|sed expression applied to theorems/NAME.v|what it breaks
MUTANTS='
rank1_lemma|s/sinv (dot z z)/sinv (dot z_C z_C)/|z_C for z in the denominator
rank1_lemma|s/(vsub z_C z)/(vsub z z_C)/|sign of the patch
rank1_lemma|s/(H1 : z != 0) :/:/|drop z != 0
rank1_min_norm|s/(H2 : matvec N z = vzero) :/:/|drop N z = 0
controllability|s/(vsub u_C u)/(vsub u u_C)/|sign of the output patch
block_gemma3|s/(H13 : coords_nz f_C) :/:/|drop: every coordinate of f_C nonzero
block_gemma3|s/(H12 : z != 0)//|drop z != 0
block_gemma3|s/(ediv delta f_C)/(ediv (vneg delta) f_C)/|sign of the scale patch
block_gemma3|s/(sinv (dot z z))/(sinv (dot z_C z_C))/|z_C for z in the rank-1 denominator
block_gemma3_stable|s/(H21 : mean (vpow y 2) = 1)//|drop mean(y^2) = 1
block_llama|s/(H11 : a_C != 0) :/:/|drop a_C != 0 (the W_down rank-1 patch)
block_llama4|s/(sinv (smul (snat k) (dot (a_C e) (a_C e))))/(sinv (dot (a_C e) (a_C e)))/|each expert adds delta, not delta / k
block_qwen2_moe|s/(H14 : w'"'"'_sg = vadd (vscale (sadd (sneg (dot w_sg z)) (dot w_sg z_C))/(H14 : w'"'"'_sg = vadd (vscale (sadd (sneg (dot w_sg z_C)) (dot w_sg z))/|sign of the shared gate patch
block_olmo2|s/(ediv delta f_C) gamma_post/(ediv delta f_C) (vscale (snat 2) gamma_post)/|a doubled scale
block_vanilla_skip|s/(H4 : b'"'"'_down = vadd b_down delta)/(H4 : b'"'"'_down = b_down)/|no bias patch
block_gptj|s/(H3 : b'"'"'_down = vadd b_down delta)/(H3 : b'"'"'_down = vsub b_down delta)/|sign of the bias patch
multilayer_gemma3|s/(ediv (vsub u_C_l u_l) f_C_l)/(ediv (vsub u_l u_C_l) f_C_l)/|sign of delta at layer l (the post-norm scale patch)
sequence_lemma|s/= vsub y (matvec W (matvec Z c))/= vsub (matvec W (matvec Z c)) y/|sign of B c
sequence_postnorm_scale|s/(ssub 1 (mean/(ssub (snat 2) (mean/|the RMS condition on eps
negative_rmsnorm_ball|s/(H1 : 0 < epsilon) :/:/|drop eps > 0
negative_layernorm_mean|s/(vsub h (vconst (mean h)))) = 0/h) = 0/|no centring
negative_scalar_ray|s/(H1 : coords_nz (had gamma f_C)) :/:/|drop: every coordinate nonzero
'
VARIANTS='
block_gemma3|s/(vadd (vneg (matvec W_gate z)) (matvec W_gate z_C))/(matvec W_gate (vsub z_C z))/|W_gate (z_C - z) in the rank-1 patch
block_gemma3|s/(vadd (vneg (matvec W_up z)) (matvec W_up z_C))/(vsub (matvec W_up z_C) (matvec W_up z))/|W_up z_C - W_up z in the rank-1 patch
block_gemma3|s/(sadd epsilon_post (mean (vpow h'"'"' 2)))/(sadd (mean (vpow h'"'"' 2)) epsilon_post)/|mean + eps in one norm, eps + mean in the others
block_gemma3|s/(H7 : a'"'"' = had (matvec W'"'"'_up z) (vmap sigma (matvec W'"'"'_gate z)))/(H7 : a'"'"' = had (vmap sigma (matvec W'"'"'_gate z)) (matvec W'"'"'_up z))/|the gated product in the other order
block_llama|s/(H9 : y_C = vadd (vadd delta h_C) u)/(H9 : y_C = vadd u (vadd h_C delta))/|another order of the output sum
'
tmp=$(mktemp -d "$DIR/check_tmp_XXXXXX"); trap 'rm -rf "$tmp"' EXIT
coqc1() { coqc -q $FLAGS -R . CtxPatch "$1" >"$tmp/out" 2>&1; }
edit() {  # edit NAME SED KIND WHAT -> $tmp/NAME_KIND.v, or status 1 when DIR has no NAME
  [ -f "theorems/$1.v" ] || return 1
  sed "$2" "theorems/$1.v" > "$tmp/$1_$3.v"
  cmp -s "theorems/$1.v" "$tmp/$1_$3.v" && fail "$3 of $1 ($4) changes nothing: $2"
  return 0
}
killed=0 skipped=0
while IFS='|' read -r name expr what; do
  [ -n "$name" ] || continue
  edit "$name" "$expr" mutant "$what" || { skipped=$((skipped + 1)); continue; }
  coqc1 "$tmp/${name}_mutant.v" && fail "mutant SURVIVED: $name: $what ($expr)"
  echo "mutant killed: $name: $what -- $(grep -m1 -A1 'Error' "$tmp/out" | tr '\n' ' ' | cut -c1-100)"
  killed=$((killed + 1))
done <<EOF
$MUTANTS
EOF
accepted=0
while IFS='|' read -r name expr what; do
  [ -n "$name" ] || continue
  edit "$name" "$expr" variant "$what" || { skipped=$((skipped + 1)); continue; }
  coqc1 "$tmp/${name}_variant.v" || { cat "$tmp/out"; fail "variant REFUSED: $name: $what ($expr)"; }
  echo "variant accepted: $name: $what"
  accepted=$((accepted + 1))
done <<EOF
$VARIANTS
EOF
echo "check.sh: ok ($killed mutants killed, $accepted variants accepted, $skipped skipped for a theorem not in $DIR)"
