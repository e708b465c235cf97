From Coq Require Import Ring Field.
From mathcomp Require Import all_ssreflect all_algebra.
From CtxPatch Require Import CtxPatch.

Set Implicit Arguments.
Unset Strict Implicit.
Unset Printing Implicit Defensive.
Import GRing.Theory Num.Theory.
Local Open Scope ring_scope.

Section Theorems.
Variable R : rcfType.
Add Field ctx_field : (ctx_field_theory R).

Theorem block_gemma3 (d m : nat)
  (W_gate W_up : 'M[R]_(m.+1, d.+1)) (W_down : 'M[R]_(d.+1, m.+1)) (u delta z z_C w_post : 'cV[R]_d.+1)
  (epsilon_post : R) (sigma : R -> R)
  (a_C : 'cV[R]_m.+1) (h_C f_C : 'cV[R]_d.+1) (W'_gate W'_up : 'M[R]_(m.+1, d.+1)) (w'_post : 'cV[R]_d.+1)
  (a' : 'cV[R]_m.+1) (h' y' y_C : 'cV[R]_d.+1)
  (H1 : a_C = had (matvec W_up z_C) (vmap sigma (matvec W_gate z_C)))
  (H2 : h_C = matvec W_down a_C)
  (H3 : f_C = vscale (sinv (ssqrt (sadd epsilon_post (mean (vpow h_C 2))))) h_C)
  (H4 : W'_gate = madd W_gate (outer (vscale (sinv (dot z z)) (vsub (matvec W_gate z_C) (matvec W_gate z))) z))
  (H5 : W'_up = madd W_up (outer (vscale (sinv (dot z z)) (vsub (matvec W_up z_C) (matvec W_up z))) z))
  (H6 : w'_post = vadd (ediv delta f_C) w_post)
  (H7 : a' = had (matvec W'_up z) (vmap sigma (matvec W'_gate z)))
  (H8 : h' = matvec W_down a')
  (H9 : y' = vadd (had (vadd (vconst 1) w'_post) (vscale (sinv (ssqrt (sadd epsilon_post (mean (vpow h' 2))))) h')) u)
  (H10 : y_C = vadd (vadd (had (vadd (vconst 1) w_post) (vscale (sinv (ssqrt (sadd epsilon_post (mean (vpow h_C 2))))) h_C)) delta) u)
  (H11 : 0 < epsilon_post)
  (H12 : z != 0)
  (H13 : coords_nz f_C) :
  y' = y_C.
Proof.
subst. ctx_rank1. Timeout 60 ctx_vec.
Qed.

End Theorems.

