#!/bin/sh
# Check the Coq project in this directory (or in DIR, the first argument: a project that
# `ctxpatch prove --coq DIR` wrote), then show that mutated statements are refused.
#
#   1. every `Theorem NAME` of Theorems.v has the proof script scripts/NAME.ltac, verbatim
#      (only for this directory, where the scripts live);
#   2. no Admitted / admit / Axiom / Parameter / Hypothesis in any .v file;
#   3. coq_makefile -f _CoqProject -o Makefile.coq && make -f Makefile.coq;
#   4. every `Print Assumptions` answers "Closed under the global context";
#   5. (only for this directory, whose Theorems.v the mutants are written against) each mutant
#      below changes one statement of Theorems.v; coqc must refuse every one (and accept the same
#      theorem unmutated, in the same harness);
#   6. (same) each variant below spells one statement differently but equivalently (another
#      tree of the same operations); coqc must accept every one: the scripts do not depend on
#      the printer's choice of tree.
#
# Exit 0 when all of it holds. Needs coqc 8.16 and mathcomp 1.15 (ssreflect, algebra).
set -eu

HERE=$(cd "$(dirname "$0")" && pwd)
DIR=$(cd "${1:-$HERE}" && pwd)
cd "$DIR"
fail() { echo "check.sh: $*" >&2; exit 1; }

# --- 1. scripts match the rendering (only where the scripts live)
if [ -d scripts ]; then
  for name in $(sed -n 's/^Theorem \([A-Za-z0-9_'"'"']*\).*/\1/p' Theorems.v); do
    [ -f "scripts/$name.ltac" ] || fail "no proof script scripts/$name.ltac for theorem $name"
    awk -v n="$name" '$1 == "Theorem" && $2 == n { t = 1; next }
                      t && /^Proof\.$/ { p = 1; next }
                      p && /^Qed\.$/ { exit }
                      p { print }' Theorems.v > .body.tmp
    cmp -s .body.tmp "scripts/$name.ltac" || { rm -f .body.tmp; fail "the proof of $name in Theorems.v differs from scripts/$name.ltac"; }
  done
  rm -f .body.tmp
  for f in scripts/*.ltac; do
    name=$(basename "$f" .ltac)
    awk -v n="$name" '$1 == "Theorem" && $2 == n { f = 1 } END { exit !f }' Theorems.v || fail "script $f has no theorem in Theorems.v"
  done
fi

# --- 2. nothing assumed
if grep -nE '\b(Admitted|admit|Axiom|Axioms|Parameter|Parameters|Hypothesis|Hypotheses|Conjecture)\b' ./*.v; then
  fail "an admission or an axiom (above)"
fi

# --- 3. build
coq_makefile -f _CoqProject -o Makefile.coq >/dev/null
make -f Makefile.coq clean >/dev/null 2>&1  # a full build prints every Print Assumptions
start=$(date +%s)
make -f Makefile.coq >make.log 2>&1 || { cat make.log; fail "coqc refused the project (make.log)"; }
end=$(date +%s)
echo "coqc: project checked in $((end - start)) s"

# --- 4. Print Assumptions
printed=$(grep -c '^Print Assumptions' ./*.v | awk -F: '{ s += $2 } END { print s }')
closed=$(grep -c 'Closed under the global context' make.log || true)
[ "$printed" -eq "$closed" ] || { cat make.log; fail "$closed of $printed Print Assumptions closed"; }
echo "Print Assumptions: $closed of $printed theorems closed under the global context"

# --- 5. mutants: NAME|sed expression applied inside theorem NAME|what it breaks
[ "$DIR" = "$HERE" ] || { echo "check.sh: ok"; exit 0; }
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
block_llama|s/(H11 : a_C != 0) :/:/|drop a_C != 0 (the W_down rank-1 patch)
block_olmo2|s/(ediv delta f_C) gamma_post/(ediv delta f_C) (vscale (snat 2) gamma_post)/|a doubled scale
block_vanilla_skip|s/(H4 : b'"'"'_down = vadd b_down delta)/(H4 : b'"'"'_down = b_down)/|no bias patch
block_gptj|s/(H3 : b'"'"'_down = vadd b_down delta)/(H3 : b'"'"'_down = vsub b_down delta)/|sign of the bias patch
multilayer_gemma3|s/(vadd (vneg u_l) u_C_l)/(vadd (vneg u_C_l) u_l)/|sign of delta at layer l
sequence_lemma|s/= vsub y (matvec W (matvec Z c))/= vsub (matvec W (matvec Z c)) y/|sign of B c
sequence_postnorm_scale|s/(ssub 1 (mean/(ssub (snat 2) (mean/|the RMS condition on eps
negative_rmsnorm_ball|s/(H1 : 0 < epsilon) :/:/|drop eps > 0
negative_layernorm_mean|s/(vsub h (vconst (mean h)))) = 0/h) = 0/|no centring
negative_scalar_ray|s/(H1 : coords_nz (had gamma f_C)) :/:/|drop: every coordinate nonzero
'
header=$(sed -n '1,/^Add Field/p' Theorems.v)
one() {  # one NAME SED -> a file with the header and theorem NAME (mutated by SED), then End
  printf '%s\n\n' "$header"
  awk -v n="$1" '$1 == "Theorem" && $2 == n { t = 1 } t { print } t && /^Qed\.$/ { exit }' Theorems.v | sed "$2"
  printf '\nEnd Theorems.\n'
}
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
echo "$MUTANTS" | while IFS='|' read -r name expr what; do
  [ -n "$name" ] || continue
  one "$name" 's/^$//' > "$tmp/Orig.v"
  one "$name" "$expr" > "$tmp/Mutant.v"
  cmp -s "$tmp/Orig.v" "$tmp/Mutant.v" && fail "mutant of $name ($what) changes nothing: $expr"
  coqc -R . CtxPatch -w -notation-overridden,-ambiguous-paths "$tmp/Orig.v" >/dev/null 2>&1 \
    || fail "$name alone does not check in the mutation harness"
  if coqc -R . CtxPatch -w -notation-overridden,-ambiguous-paths "$tmp/Mutant.v" >"$tmp/out" 2>&1; then
    fail "mutant SURVIVED: $name: $what ($expr)"
  fi
  why=$(grep -m1 -A1 'Error' "$tmp/out" | tr '\n' ' ' | cut -c1-110)
  echo "mutant killed: $name: $what -- $why"
done

VARIANTS='
block_gemma3|s/(vadd (vneg (matvec W_gate z)) (matvec W_gate z_C))/(matvec W_gate (vsub z_C z))/|W_gate (z_C - z) in the rank-1 patch
block_gemma3|s/(vadd (vneg (matvec W_up z)) (matvec W_up z_C))/(vsub (matvec W_up z_C) (matvec W_up z))/|W_up z_C - W_up z in the rank-1 patch
block_gemma3|s/(sadd epsilon_post (mean (vpow h'"'"' 2)))/(sadd (mean (vpow h'"'"' 2)) epsilon_post)/|mean + eps in one norm, eps + mean in the others
block_gemma3|s/(H7 : a'"'"' = had (matvec W'"'"'_up z) (vmap sigma (matvec W'"'"'_gate z)))/(H7 : a'"'"' = had (vmap sigma (matvec W'"'"'_gate z)) (matvec W'"'"'_up z))/|the gated product in the other order
block_llama|s/(H9 : y_C = vadd (vadd delta h_C) u)/(H9 : y_C = vadd u (vadd h_C delta))/|another order of the output sum
'
echo "$VARIANTS" | while IFS='|' read -r name expr what; do
  [ -n "$name" ] || continue
  one "$name" "$expr" > "$tmp/Variant.v"
  one "$name" 's/^$//' | cmp -s - "$tmp/Variant.v" && fail "variant of $name ($what) changes nothing: $expr"
  coqc -R . CtxPatch -w -notation-overridden,-ambiguous-paths "$tmp/Variant.v" >"$tmp/out" 2>&1 \
    || { cat "$tmp/out"; fail "variant REFUSED: $name: $what ($expr)"; }
  echo "variant accepted: $name: $what"
done
rm -f "$tmp"/*.vo "$tmp"/*.glob "$tmp"/.*.aux 2>/dev/null || true
echo "check.sh: ok"
