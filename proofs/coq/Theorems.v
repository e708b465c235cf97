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

Theorem rank1_lemma (d m : nat)
  (W : 'M[R]_(m.+1, d.+1)) (z z_C : 'cV[R]_d.+1)
  (H1 : z != 0) :
  matvec (madd W (outer (vscale (sinv (dot z z)) (matvec W (vsub z_C z))) z)) z = matvec W z_C.
Proof.
ctx_rank1.
Qed.

Theorem rank1_min_norm_split (d m : nat)
  (W D : 'M[R]_(m.+1, d.+1)) (z z_C : 'cV[R]_d.+1)
  (H1 : z != 0)
  (H2 : matvec D z = matvec W (vsub z_C z)) :
  matvec (msub D (outer (vscale (sinv (dot z z)) (matvec W (vsub z_C z))) z)) z = vzero.
Proof.
rewrite mulmxBl outer_apply scale_dotK //.
ctx_eqs.
by rewrite subrr.
Qed.

Theorem rank1_min_norm (d m : nat)
  (W N : 'M[R]_(m.+1, d.+1)) (z z_C : 'cV[R]_d.+1)
  (H1 : z != 0)
  (H2 : matvec N z = vzero) :
  frob (madd (outer (vscale (sinv (dot z z)) (matvec W (vsub z_C z))) z) N)
       (madd (outer (vscale (sinv (dot z z)) (matvec W (vsub z_C z))) z) N) =
  sadd (frob (outer (vscale (sinv (dot z z)) (matvec W (vsub z_C z))) z)
             (outer (vscale (sinv (dot z z)) (matvec W (vsub z_C z))) z))
       (frob N N).
Proof.
rewrite frobDl !frobDr.
ctx_kill.
by rewrite addr0 add0r.
Qed.

Theorem controllability (d k p r : nat)
  (F : 'cV[R]_d.+1 -> 'cV[R]_p.+1 -> 'cV[R]_k.+1) (ThP : 'cV[R]_d.+1 -> 'cV[R]_d.+1 -> 'cV[R]_p.+1)
  (theta : 'cV[R]_p.+1)
  (G : 'cV[R]_k.+1 -> 'cV[R]_r.+1 -> 'cV[R]_d.+1) (PhP : 'cV[R]_k.+1 -> 'cV[R]_d.+1 -> 'cV[R]_r.+1)
  (phi : 'cV[R]_r.+1) (u u_C z z_C : 'cV[R]_d.+1)
  (H1 : forall (Z1 : 'cV[R]_d.+1) (Z2 : 'cV[R]_d.+1), F Z1 (ThP Z1 Z2) = F Z2 theta)
  (H2 : forall (A : 'cV[R]_k.+1) (Dl : 'cV[R]_d.+1), G A (PhP A Dl) = vadd Dl (G A phi)) :
  vadd u (G (F z (ThP z z_C)) (PhP (F z_C theta) (vsub u_C u))) = vadd u_C (G (F z_C theta) phi).
Proof.
rewrite H1 H2.
ctx_vec.
Qed.

Theorem block_gemma3 (d m : nat)
  (a_C : 'cV[R]_m.+1) (W_up : 'M[R]_(m.+1, d.+1)) (z_C : 'cV[R]_d.+1) (sigma : R -> R)
  (W_gate : 'M[R]_(m.+1, d.+1)) (h_C : 'cV[R]_d.+1) (W_down : 'M[R]_(d.+1, m.+1))
  (f_C : 'cV[R]_d.+1) (epsilon_post : R) (W'_gate : 'M[R]_(m.+1, d.+1)) (z : 'cV[R]_d.+1)
  (W'_up : 'M[R]_(m.+1, d.+1)) (w'_post delta w_post : 'cV[R]_d.+1) (a' : 'cV[R]_m.+1)
  (h' y' u y_C : 'cV[R]_d.+1)
  (H1 : a_C = had (matvec W_up z_C) (vmap sigma (matvec W_gate z_C)))
  (H2 : h_C = matvec W_down a_C)
  (H3 : f_C = vscale (sinv (ssqrt (sadd epsilon_post (mean (vpow h_C 2))))) h_C)
  (H4 : W'_gate = madd W_gate (outer (vscale (sinv (dot z z))
                                        (vadd (vneg (matvec W_gate z)) (matvec W_gate z_C))) z))
  (H5 : W'_up = madd W_up (outer (vscale (sinv (dot z z))
                                    (vadd (vneg (matvec W_up z)) (matvec W_up z_C))) z))
  (H6 : w'_post = vadd (ediv delta f_C) w_post)
  (H7 : a' = had (matvec W'_up z) (vmap sigma (matvec W'_gate z)))
  (H8 : h' = matvec W_down a')
  (H9 : y' = vadd (had (vadd (vconst 1) w'_post)
                       (vscale (sinv (ssqrt (sadd epsilon_post (mean (vpow h' 2))))) h')) u)
  (H10 : y_C = vadd (vadd (had (vadd (vconst 1) w_post)
                               (vscale (sinv (ssqrt (sadd epsilon_post (mean (vpow h_C 2))))) h_C))
                          delta) u)
  (H11 : 0 < epsilon_post)
  (H12 : z != 0)
  (H13 : coords_nz f_C) :
  y' = y_C.
Proof.
subst.
ctx_rank1.
ctx_vec.
Qed.

Theorem multilayer_gemma3 (d m : nat)
  (u_l : 'cV[R]_d.+1) (A : R -> 'cV[R]_d.+1 -> 'cV[R]_d.+1) (l : R) (s_prev : 'cV[R]_d.+1)
  (u_C_l : 'cV[R]_d.+1) (A_C : R -> 'cV[R]_d.+1 -> 'cV[R]_d.+1) (c_prev z_l w_pre : 'cV[R]_d.+1)
  (epsilon_pre : R) (z_C_l : 'cV[R]_d.+1) (a_C_l : 'cV[R]_m.+1) (W_up W_gate : 'M[R]_(m.+1, d.+1))
  (sigma : R -> R) (h_C_l : 'cV[R]_d.+1) (W_down : 'M[R]_(d.+1, m.+1)) (f_C_l : 'cV[R]_d.+1)
  (epsilon_post : R) (W'_gate_l W'_up_l : 'M[R]_(m.+1, d.+1)) (w'_post_l w_post : 'cV[R]_d.+1)
  (a'_l : 'cV[R]_m.+1) (h'_l s_l c_l : 'cV[R]_d.+1)
  (H1 : u_l = A l s_prev)
  (H2 : u_C_l = A_C l c_prev)
  (H3 : z_l = vscale (sinv (ssqrt (sadd epsilon_pre (mean (vpow u_l 2))))) (had (vadd (vconst 1) w_pre) u_l))
  (H4 : z_C_l = vscale (sinv (ssqrt (sadd epsilon_pre (mean (vpow u_C_l 2)))))
                       (had (vadd (vconst 1) w_pre) u_C_l))
  (H5 : a_C_l = had (matvec W_up z_C_l) (vmap sigma (matvec W_gate z_C_l)))
  (H6 : h_C_l = matvec W_down a_C_l)
  (H7 : f_C_l = vscale (sinv (ssqrt (sadd epsilon_post (mean (vpow h_C_l 2))))) h_C_l)
  (H8 : W'_gate_l = madd W_gate (outer (vscale (sinv (dot z_l z_l))
                                          (vadd (vneg (matvec W_gate z_l)) (matvec W_gate z_C_l))) z_l))
  (H9 : W'_up_l = madd W_up (outer (vscale (sinv (dot z_l z_l))
                                      (vadd (vneg (matvec W_up z_l)) (matvec W_up z_C_l))) z_l))
  (H10 : w'_post_l = vadd (ediv (vadd (vneg u_l) u_C_l) f_C_l) w_post)
  (H11 : a'_l = had (matvec W'_up_l z_l) (vmap sigma (matvec W'_gate_l z_l)))
  (H12 : h'_l = matvec W_down a'_l)
  (H13 : s_l = vadd (had (vadd (vconst 1) w'_post_l)
                         (vscale (sinv (ssqrt (sadd epsilon_post (mean (vpow h'_l 2))))) h'_l)) u_l)
  (H14 : c_l = vadd (had (vadd (vconst 1) w_post)
                         (vscale (sinv (ssqrt (sadd epsilon_post (mean (vpow h_C_l 2))))) h_C_l)) u_C_l)
  (H15 : 0 < epsilon_pre)
  (H16 : 0 < epsilon_post)
  (H17 : z_l != 0)
  (H18 : coords_nz f_C_l) :
  s_l = c_l.
Proof.
subst.
ctx_rank1.
ctx_vec.
Qed.

Theorem sequence_lemma (d m q : nat)
  (A : 'M[R]_(q.+1, d.+1)) (Z : 'M[R]_(d.+1, q.+1)) (c : 'cV[R]_q.+1) (B : 'M[R]_(m.+1, q.+1))
  (y : 'cV[R]_m.+1) (W : 'M[R]_(m.+1, d.+1))
  (H1 : matvec A (matvec Z c) = c)
  (H2 : matvec B c = vsub y (matvec W (matvec Z c))) :
  vadd (matvec W (matvec Z c)) (matvec B (matvec A (matvec Z c))) = y.
Proof.
ctx_eqs.
ctx_vec.
Qed.

Theorem sequence_input_patch (d m q : nat)
  (A : 'M[R]_(q.+1, d.+1)) (Z : 'M[R]_(d.+1, q.+1)) (c : 'cV[R]_q.+1) (B : 'M[R]_(m.+1, q.+1))
  (W : 'M[R]_(m.+1, d.+1)) (Z_C : 'M[R]_(d.+1, q.+1))
  (H1 : matvec A (matvec Z c) = c)
  (H2 : matvec B c = vsub (matvec W (matvec Z_C c)) (matvec W (matvec Z c))) :
  vadd (matvec W (matvec Z c)) (matvec B (matvec A (matvec Z c))) = matvec W (matvec Z_C c).
Proof.
ctx_eqs.
ctx_vec.
Qed.

Theorem sequence_output_patch (d m q : nat)
  (A_H : 'M[R]_(q.+1, m.+1)) (H : 'M[R]_(m.+1, q.+1)) (c : 'cV[R]_q.+1) (B_H : 'M[R]_(d.+1, q.+1))
  (y_star : 'cV[R]_d.+1) (W_down : 'M[R]_(d.+1, m.+1))
  (H1 : matvec A_H (matvec H c) = c)
  (H2 : matvec B_H c = vsub y_star (matvec W_down (matvec H c))) :
  vadd (matvec W_down (matvec H c)) (matvec B_H (matvec A_H (matvec H c))) = y_star.
Proof.
ctx_eqs.
ctx_vec.
Qed.

Theorem sequence_min_norm (d q : nat)
  (rho : 'cV[R]_d.+1) (Z : 'M[R]_(d.+1, q.+1)) (g : 'cV[R]_q.+1) (n : 'cV[R]_d.+1)
  (H1 : rho = matvec Z g)
  (H2 : dot n (matvec Z g) = 0) :
  dot (vadd rho n) (vadd rho n) = sadd (dot rho rho) (dot n n).
Proof.
subst.
rewrite dotDl !dotDr (dotC (matvec Z g) n).
ctx_eqs.
ctx_num.
Qed.

Theorem sequence_postnorm_scale (d : nat)
  (gamma' h' : 'cV[R]_d.+1) (c : R) (t : 'cV[R]_d.+1) (epsilon : R)
  (H1 : 0 < c)
  (H2 : 0 < epsilon)
  (H3 : coords_nz gamma')
  (H4 : h' = ediv (vscale c t) gamma')
  (H5 : 0 < sadd (mean (vpow h' 2)) epsilon)
  (H6 : epsilon = smul (spow c 2) (ssub 1 (mean (ediv (vpow t 2) (vpow gamma' 2))))) :
  vscale (sinv (ssqrt (sadd (mean (vpow h' 2)) epsilon))) (had gamma' h') = t.
Proof.
subst.
have -> : vpow (ediv (vscale c t) gamma') 2 = vscale (spow c 2) (ediv (vpow t 2) (vpow gamma' 2)).
  ctx_vec.
rewrite mean_scale -mulrDr addrC subrK mulr1 sqrt_sqr_pos //.
ctx_vec.
Qed.

Theorem sequence_dependent_tokens (d m : nat)
  (z_3 z_1 z_2 : 'cV[R]_d.+1) (a b : R) (L : 'M[R]_(m.+1, d.+1)) (y_1 y_2 : 'cV[R]_m.+1)
  (H1 : z_3 = vadd (vscale a z_1) (vscale b z_2))
  (H2 : matvec L z_1 = y_1)
  (H3 : matvec L z_2 = y_2) :
  matvec L z_3 = vadd (vscale a y_1) (vscale b y_2).
Proof.
subst.
ctx_linear.
ctx_vec.
Qed.

Theorem negative_rmsnorm_ball (d : nat)
  (h : 'cV[R]_d.+1) (epsilon : R)
  (H1 : 0 < epsilon) :
  mean (vpow (vscale (sinv (ssqrt (sadd (mean (vpow h 2)) epsilon))) h) 2) < 1.
Proof.
have -> : vpow (vscale (sinv (ssqrt (sadd (mean (vpow h 2)) epsilon))) h) 2 =
          vscale (sinv (spow (ssqrt (sadd (mean (vpow h 2)) epsilon)) 2)) (vpow h 2).
  by apply/colP => i; rewrite !ctxE exprMn exprVn.
have S0 : 0 < mean (vpow h 2) + epsilon by rewrite ltr_paddl // mean_sq_ge0.
rewrite mean_scale (sqr_sqrtr (Order.POrderTheory.ltW S0)).
by rewrite mulrC ltr_pdivr_mulr // mul1r ltr_addl.
Qed.

Theorem negative_layernorm_mean (d : nat)
  (h : 'cV[R]_d.+1) (epsilon : R)
  (H1 : 0 < epsilon) :
  mean (vscale (sinv (ssqrt (sadd (mean (vpow (vsub h (vconst (mean h))) 2)) epsilon)))
               (vsub h (vconst (mean h)))) = 0.
Proof.
by rewrite mean_scale mean_sub mean_const subrr mulr0.
Qed.

Theorem negative_scalar_ray (d : nat)
  (gamma f_C : 'cV[R]_d.+1) (s : R)
  (H1 : coords_nz (had gamma f_C)) :
  ediv (vscale s (had gamma f_C)) (had gamma f_C) = vconst s.
Proof.
ctx_vec.
Qed.

Theorem negative_bounded_activation
  (tanh : R -> R) (x : R)
  (H1 : forall x : R, - 1 < tanh x < 1) :
  tanh x < 1.
Proof.
by case/andP: (H1 x).
Qed.

Theorem block_llama (d m : nat)
  (a_C : 'cV[R]_m.+1) (W_up : 'M[R]_(m.+1, d.+1)) (z_C : 'cV[R]_d.+1) (sigma : R -> R)
  (W_gate : 'M[R]_(m.+1, d.+1)) (h_C : 'cV[R]_d.+1) (W_down : 'M[R]_(d.+1, m.+1))
  (W'_gate : 'M[R]_(m.+1, d.+1)) (z : 'cV[R]_d.+1) (W'_up : 'M[R]_(m.+1, d.+1))
  (W'_down : 'M[R]_(d.+1, m.+1)) (delta : 'cV[R]_d.+1) (a' : 'cV[R]_m.+1) (h' y' u y_C : 'cV[R]_d.+1)
  (H1 : a_C = had (matvec W_up z_C) (vmap sigma (matvec W_gate z_C)))
  (H2 : h_C = matvec W_down a_C)
  (H3 : W'_gate = madd W_gate (outer (vscale (sinv (dot z z)) (vadd (vneg (matvec W_gate z)) (matvec W_gate z_C))) z))
  (H4 : W'_up = madd W_up (outer (vscale (sinv (dot z z)) (vadd (vneg (matvec W_up z)) (matvec W_up z_C))) z))
  (H5 : W'_down = madd W_down (outer (vscale (sinv (dot a_C a_C)) delta) a_C))
  (H6 : a' = had (matvec W'_up z) (vmap sigma (matvec W'_gate z)))
  (H7 : h' = matvec W'_down a')
  (H8 : y' = vadd h' u)
  (H9 : y_C = vadd (vadd delta h_C) u)
  (H10 : z != 0)
  (H11 : a_C != 0) :
  y' = y_C.
Proof.
subst.
ctx_rank1.
ctx_vec.
Qed.

Theorem block_olmo2 (d m : nat)
  (a_C : 'cV[R]_m.+1) (W_up : 'M[R]_(m.+1, d.+1)) (z_C : 'cV[R]_d.+1) (sigma : R -> R)
  (W_gate : 'M[R]_(m.+1, d.+1)) (h_C : 'cV[R]_d.+1) (W_down : 'M[R]_(d.+1, m.+1))
  (f_C : 'cV[R]_d.+1) (epsilon_post : R) (W'_gate : 'M[R]_(m.+1, d.+1)) (z : 'cV[R]_d.+1)
  (W'_up : 'M[R]_(m.+1, d.+1)) (gamma'_post delta gamma_post : 'cV[R]_d.+1) (a' : 'cV[R]_m.+1)
  (h' y' u y_C : 'cV[R]_d.+1)
  (H1 : a_C = had (matvec W_up z_C) (vmap sigma (matvec W_gate z_C)))
  (H2 : h_C = matvec W_down a_C)
  (H3 : f_C = vscale (sinv (ssqrt (sadd epsilon_post (mean (vpow h_C 2))))) h_C)
  (H4 : W'_gate = madd W_gate (outer (vscale (sinv (dot z z)) (vadd (vneg (matvec W_gate z)) (matvec W_gate z_C))) z))
  (H5 : W'_up = madd W_up (outer (vscale (sinv (dot z z)) (vadd (vneg (matvec W_up z)) (matvec W_up z_C))) z))
  (H6 : gamma'_post = vadd (ediv delta f_C) gamma_post)
  (H7 : a' = had (matvec W'_up z) (vmap sigma (matvec W'_gate z)))
  (H8 : h' = matvec W_down a')
  (H9 : y' = vadd (had gamma'_post (vscale (sinv (ssqrt (sadd epsilon_post (mean (vpow h' 2))))) h')) u)
  (H10 : y_C = vadd (vadd (had gamma_post (vscale (sinv (ssqrt (sadd epsilon_post (mean (vpow h_C 2))))) h_C))
                          delta) u)
  (H11 : 0 < epsilon_post)
  (H12 : z != 0)
  (H13 : coords_nz f_C) :
  y' = y_C.
Proof.
subst.
ctx_rank1.
ctx_vec.
Qed.

Theorem block_vanilla_skip (d m : nat)
  (a_C : 'cV[R]_m.+1) (sigma : R -> R) (W_up : 'M[R]_(m.+1, d.+1)) (z_C : 'cV[R]_d.+1)
  (b_up : 'cV[R]_m.+1) (h_C : 'cV[R]_d.+1) (W_down : 'M[R]_(d.+1, m.+1)) (b_down : 'cV[R]_d.+1)
  (W'_up : 'M[R]_(m.+1, d.+1)) (z b'_down delta : 'cV[R]_d.+1) (a' : 'cV[R]_m.+1)
  (h' y' u y_C : 'cV[R]_d.+1)
  (H1 : a_C = vmap sigma (vadd (matvec W_up z_C) b_up))
  (H2 : h_C = vadd (matvec W_down a_C) b_down)
  (H3 : W'_up = madd W_up (outer (vscale (sinv (dot z z)) (vadd (vneg (matvec W_up z)) (matvec W_up z_C))) z))
  (H4 : b'_down = vadd b_down delta)
  (H5 : a' = vmap sigma (vadd (matvec W'_up z) b_up))
  (H6 : h' = vadd (matvec W_down a') b'_down)
  (H7 : y' = vadd h' u)
  (H8 : y_C = vadd (vadd delta h_C) u)
  (H9 : z != 0) :
  y' = y_C.
Proof.
subst.
ctx_rank1.
ctx_vec.
Qed.

Theorem block_gptj (d m : nat)
  (a_C : 'cV[R]_m.+1) (sigma : R -> R) (W_up : 'M[R]_(m.+1, d.+1)) (z : 'cV[R]_d.+1)
  (b_up : 'cV[R]_m.+1) (h_C : 'cV[R]_d.+1) (W_down : 'M[R]_(d.+1, m.+1)) (b_down : 'cV[R]_d.+1)
  (b'_down delta : 'cV[R]_d.+1) (a' : 'cV[R]_m.+1) (h' y' u y_C : 'cV[R]_d.+1)
  (H1 : a_C = vmap sigma (vadd (matvec W_up z) b_up))
  (H2 : h_C = vadd (matvec W_down a_C) b_down)
  (H3 : b'_down = vadd b_down delta)
  (H4 : a' = a_C)
  (H5 : h' = vadd (matvec W_down a') b'_down)
  (H6 : y' = vadd h' u)
  (H7 : y_C = vadd (vadd delta h_C) u) :
  y' = y_C.
Proof.
subst.
ctx_rank1.
ctx_vec.
Qed.

End Theorems.

Print Assumptions rank1_lemma.
Print Assumptions rank1_min_norm_split.
Print Assumptions rank1_min_norm.
Print Assumptions controllability.
Print Assumptions block_gemma3.
Print Assumptions multilayer_gemma3.
Print Assumptions sequence_lemma.
Print Assumptions sequence_input_patch.
Print Assumptions sequence_output_patch.
Print Assumptions sequence_min_norm.
Print Assumptions sequence_postnorm_scale.
Print Assumptions sequence_dependent_tokens.
Print Assumptions negative_rmsnorm_ball.
Print Assumptions negative_layernorm_mean.
Print Assumptions negative_scalar_ray.
Print Assumptions negative_bounded_activation.
Print Assumptions block_llama.
Print Assumptions block_olmo2.
Print Assumptions block_vanilla_skip.
Print Assumptions block_gptj.
