(** * CtxPatch: the vocabulary of ctxpatch's theorems, over a real closed field.

    Every operation of ctxpatch's term language has one Coq spelling here, in prefix form, so that a
    printer writes any term compositionally: [(op arg1 ... argk)].  Scalars live in a real closed
    field [R : rcfType] (mathcomp), vectors of symbolic length [d] in ['cV[R]_d.+1] (column vectors,
    coordinates [v i 0]), matrices with [m] rows and [d] columns in ['M[R]_(m.+1, d.+1)].  The
    [.+1] makes every dimension positive, as the kernel's are, so [mean] is the true average.

    Operations that mathcomp already has are abbreviations of it ([vadd u v] is [u + v], [matvec W v]
    is [W *m v], [outer u v] is [u *m v^T]); the others are definitions with one coordinate lemma
    each.  Division and [Num.sqrt] are total (x / 0 = 0, sqrt of a negative = 0): a theorem proved
    here holds wherever its hypotheses do; that the terms are defined there is the kernel's own
    side-condition check.

    Nothing here is an axiom: opaque functions (sigma, exp, the activations, the attention maps)
    are variables of the theorems, and every fact about them is a hypothesis. *)

From Coq Require Import Ring Field.
From mathcomp Require Import all_ssreflect all_algebra.

Set Implicit Arguments.
Unset Strict Implicit.
Unset Printing Implicit Defensive.

Import GRing.Theory Num.Theory.
Local Open Scope ring_scope.

(** ** Scalars (type [R]) *)
Notation sadd a b := (a + b)%R (only parsing).
Notation ssub a b := (a - b)%R (only parsing).
Notation sneg a := (- a)%R (only parsing).
Notation smul a b := (a * b)%R (only parsing).
Notation sdiv a b := (a / b)%R (only parsing).
Notation sinv a := (a^-1)%R (only parsing).
Notation spow a k := (a ^+ k)%R (only parsing).
Notation ssqrt a := (Num.sqrt a) (only parsing).
Notation snat k := (k%:R)%R (only parsing).

(** ** Vectors (['cV[R]_d.+1]) and matrices (['M[R]_(m.+1, d.+1)]) from mathcomp *)
Notation vadd u v := (u + v)%R (only parsing).
Notation vsub u v := (u - v)%R (only parsing).
Notation vneg u := (- u)%R (only parsing).
Notation vscale s u := (s *: u)%R (only parsing).
Notation vzero := 0%R (only parsing).
Notation madd A B := (A + B)%R (only parsing).
Notation msub A B := (A - B)%R (only parsing).
Notation mneg A := (- A)%R (only parsing).
Notation mscale s A := (s *: A)%R (only parsing).
Notation mzero := 0%R (only parsing).
Notation matvec W v := (W *m v)%R (only parsing).
Notation outer u v := (u *m v^T)%R (only parsing).

(** ** The other operations *)
Section Vocabulary.
Variable R : rcfType.

(** the vector with every coordinate [c] *)
Definition vconst n (c : R) : 'cV[R]_n := \col_(i < n) c.
(** elementwise product (Hadamard) and quotient *)
Definition had n (u v : 'cV[R]_n) : 'cV[R]_n := \col_i (u i 0 * v i 0).
Definition ediv n (u v : 'cV[R]_n) : 'cV[R]_n := \col_i (u i 0 / v i 0).
(** elementwise integer power, square root and any function [R -> R] *)
Definition vpow n (v : 'cV[R]_n) (k : nat) : 'cV[R]_n := \col_i (v i 0 ^+ k).
Definition vsqrt n (v : 'cV[R]_n) : 'cV[R]_n := \col_i Num.sqrt (v i 0).
Definition vmap n (f : R -> R) (v : 'cV[R]_n) : 'cV[R]_n := \col_i f (v i 0).
(** a function of two scalars, coordinate by coordinate ([vmap2 Num.max u v]) *)
Definition vmap2 n (f : R -> R -> R) (u v : 'cV[R]_n) : 'cV[R]_n := \col_i f (u i 0) (v i 0).
(** [u^T v], the average of the coordinates, the Frobenius product [tr(A^T B)] *)
Definition dot n (u v : 'cV[R]_n) : R := \sum_i u i 0 * v i 0.
Definition mean n (v : 'cV[R]_n) : R := (\sum_i v i 0) / n%:R.
Definition frob m n (A B : 'M[R]_(m, n)) : R := \sum_i \sum_j A i j * B i j.
(** the hypothesis "every coordinate of [v] is nonzero" *)
Definition coords_nz n (v : 'cV[R]_n) : Prop := forall i, v i 0 != 0.

End Vocabulary.

(** max and min of two scalars (the order of the real closed field), and coordinate by coordinate *)
Notation smax a b := (Num.max a b) (only parsing).
Notation smin a b := (Num.min a b) (only parsing).
Notation vmax u v := (vmap2 Num.max u v) (only parsing).
Notation vmin u v := (vmap2 Num.min u v) (only parsing).

Arguments vconst {R n} c.
Arguments vpow {R n} v k%N.

(** ** Coordinates *)
Section Coordinates.
Variable R : rcfType.
Variable n : nat.
Implicit Types (u v : 'cV[R]_n) (s c : R) (i : 'I_n).

Lemma vaddE u v i : (u + v) i 0 = u i 0 + v i 0. Proof. by rewrite mxE. Qed.
Lemma vnegE u i : (- u) i 0 = - u i 0. Proof. by rewrite mxE. Qed.
Lemma vsubE u v i : (u - v) i 0 = u i 0 - v i 0. Proof. by rewrite !mxE. Qed.
Lemma vscaleE s u i : (s *: u) i 0 = s * u i 0. Proof. by rewrite mxE. Qed.
Lemma vzeroE i : (0 : 'cV[R]_n) i 0 = 0. Proof. by rewrite mxE. Qed.
Lemma vconstE c i : (vconst c : 'cV[R]_n) i 0 = c. Proof. by rewrite mxE. Qed.
Lemma hadE u v i : had u v i 0 = u i 0 * v i 0. Proof. by rewrite mxE. Qed.
Lemma edivE u v i : ediv u v i 0 = u i 0 / v i 0. Proof. by rewrite mxE. Qed.
Lemma vpowE v k i : vpow v k i 0 = v i 0 ^+ k. Proof. by rewrite mxE. Qed.
Lemma vsqrtE v i : vsqrt v i 0 = Num.sqrt (v i 0). Proof. by rewrite mxE. Qed.
Lemma vmapE f v i : vmap f v i 0 = f (v i 0). Proof. by rewrite mxE. Qed.
Lemma vmap2E f u v i : vmap2 f u v i 0 = f (u i 0) (v i 0). Proof. by rewrite mxE. Qed.
Lemma vsumE (I : Type) (r : seq I) (P : pred I) (F : I -> 'cV[R]_n) i :
  (\sum_(k <- r | P k) F k) i 0 = \sum_(k <- r | P k) F k i 0.
Proof. exact: summxE. Qed.

End Coordinates.

(** Every coordinate lemma, for [rewrite !ctxE]: the coordinates of [matvec], and [dot], [mean],
    [frob], stay atoms. *)
Definition ctxE := (vaddE, vsubE, vnegE, vscaleE, vzeroE, vconstE, hadE, edivE, vpowE, vsqrtE, vmapE,
                    vmap2E, vsumE).

(** ** The field tactic on [R]

    Coq's [field] needs one spelling of each operation; mathcomp's [+] on [R] comes with several
    (convertible) instances.  [ctx_fold] rewrites every scalar operation into one of the [r*]
    constants below, so that [field] (declared per section by [Add Field ctx_field :
    (ctx_field_theory R)]) sees a single field structure. *)
Section Field.
Variable R : rcfType.
Definition radd (x y : R) : R := x + y.
Definition rmul (x y : R) : R := x * y.
Definition ropp (x : R) : R := - x.
Definition rinv (x : R) : R := x^-1.
Definition rsub (x y : R) : R := radd x (ropp y).
Definition rdiv (x y : R) : R := rmul x (rinv y).
Definition r0 : R := 0.
Definition r1 : R := 1.

Lemma ctx_field_theory : field_theory r0 r1 radd rmul rsub ropp rdiv rinv (@eq R).
Proof.
rewrite /r0 /r1 /radd /rmul /rsub /ropp /rdiv /rinv; split.
- split=> [x|x y|x y z|x|x y|x y z|x y z|x y|x].
  + exact: add0r. + exact: addrC. + exact: addrA. + exact: mul1r. + exact: mulrC.
  + exact: mulrA. + exact: mulrDl. + by []. + exact: subrr.
- by apply/eqP; exact: oner_neq0.
- by [].
- by move=> x /eqP x0; apply: mulVf.
Qed.

Lemma fold_add (x y : R) : x + y = radd x y. Proof. by []. Qed.
Lemma fold_mul (x y : R) : x * y = rmul x y. Proof. by []. Qed.
Lemma fold_opp (x : R) : - x = ropp x. Proof. by []. Qed.
Lemma fold_inv (x : R) : x^-1 = rinv x. Proof. by []. Qed.
Lemma fold_0 : 0 = r0. Proof. by []. Qed.
Lemma fold_1 : 1 = r1. Proof. by []. Qed.
(** a coordinate as an atom of [field], with one spelling of its type argument *)
Definition coord m n (A : 'M[R]_(m, n)) i j : R := A i j.
Lemma fold_coord m n (A : 'M[R]_(m, n)) i j : A i j = coord A i j. Proof. by []. Qed.
Lemma ctx_eqR (a b : R) : a = b -> a = b. Proof. by []. Qed.

Lemma nz_fold (x : R) : x != 0 -> x <> r0. Proof. by move/eqP. Qed.
Lemma rmul_nz (x y : R) : x <> r0 -> y <> r0 -> rmul x y <> r0.
Proof. by rewrite /r0 /rmul => /eqP x0 /eqP y0 /eqP; rewrite mulf_eq0 (negPf x0) (negPf y0). Qed.
Lemma rinv_nz (x : R) : x <> r0 -> rinv x <> r0.
Proof. by rewrite /r0 /rinv => /eqP x0 /eqP; rewrite invr_eq0 (negPf x0). Qed.
Lemma ropp_nz (x : R) : x <> r0 -> ropp x <> r0.
Proof. by rewrite /r0 /ropp => /eqP x0 /eqP; rewrite oppr_eq0 (negPf x0). Qed.

Lemma mul_nzP (x y : R) : x * y != 0 -> x != 0 /\ y != 0.
Proof. by rewrite mulf_eq0 negb_or => /andP. Qed.
Lemma inv_nzP (x : R) : x^-1 != 0 -> x != 0. Proof. by rewrite invr_eq0. Qed.
Lemma opp_nzP (x : R) : - x != 0 -> x != 0. Proof. by rewrite oppr_eq0. Qed.
Lemma lt0_nz (x : R) : 0 < x -> x != 0. Proof. exact: lt0r_neq0. Qed.
End Field.

(** [dot z z] is nonzero when [z] is: the one fact about vectors the field tactic needs. *)
Lemma dot_nz (R : rcfType) n (z : 'cV[R]_n) : z != 0 -> dot z z != 0.
Proof.
apply: contraNneq; rewrite /dot => z0; apply/eqP/colP => i; rewrite mxE; apply/eqP.
have ge0 j : xpredT j -> 0 <= z j 0 * z j 0 by rewrite -expr2 sqr_ge0.
by have /eqP := psumr_eq0P ge0 z0 (isT : xpredT i); rewrite mulf_eq0 orbb.
Qed.

(** ** The rank-1 patch *)
Section Rank1.
Variable R : rcfType.
Implicit Types (m n : nat).

Lemma dotC n (u v : 'cV[R]_n) : dot u v = dot v u.
Proof. by apply: eq_bigr => i _; rewrite mulrC. Qed.

(** [(x z^T) v = (z^T v) x] *)
Lemma outer_apply m n (x : 'cV[R]_m) (z v : 'cV[R]_n) : (x *m z^T) *m v = dot z v *: x.
Proof.
rewrite -mulmxA [z^T *m v]mx11_scalar mul_mx_scalar; congr (_ *: _).
by rewrite mxE; apply: eq_bigr => i _; rewrite mxE.
Qed.

Lemma rank1_apply m n (W : 'M[R]_(m, n)) (x : 'cV[R]_m) (z : 'cV[R]_n) :
  (W + x *m z^T) *m z = W *m z + dot z z *: x.
Proof. by rewrite mulmxDl outer_apply. Qed.

Lemma scale_dotK m n (z : 'cV[R]_n) (r : 'cV[R]_m) : z != 0 -> dot z z *: ((dot z z)^-1 *: r) = r.
Proof. by move/dot_nz => z0; rewrite scalerA mulfV // scale1r. Qed.

Lemma add_subK (V : zmodType) (a b : V) : a + (b - a) = b.
Proof. by rewrite addrC subrK. Qed.

Lemma mulmx_subK m n (W : 'M[R]_(m, n)) (z z_C : 'cV[R]_n) : W *m z + W *m (z_C - z) = W *m z_C.
Proof. by rewrite mulmxBr add_subK. Qed.

(** the patch [r / (K z^T z)] or [r / (z^T z K)]: [z^T z] cancels *)
Lemma scale_dotKl m n (z : 'cV[R]_n) (r : 'cV[R]_m) (K : R) :
  z != 0 -> dot z z *: ((K * dot z z)^-1 *: r) = K^-1 *: r.
Proof. by move/dot_nz => z0; rewrite scalerA invfM mulrCA mulfV // mulr1. Qed.
Lemma scale_dotKr m n (z : 'cV[R]_n) (r : 'cV[R]_m) (K : R) :
  z != 0 -> dot z z *: ((dot z z * K)^-1 *: r) = K^-1 *: r.
Proof. by move=> z0; rewrite mulrC scale_dotKl. Qed.

(** the rank-1 lemma in one rewrite: [(W + (r / z^T z) z^T) z = W z + r] (and [r / (K z^T z)] adds
    [r / K]); matching on [*m] alone keeps the search cheap *)
Lemma rank1_applyK m n (W : 'M[R]_(m, n)) (z : 'cV[R]_n) (r : 'cV[R]_m) :
  z != 0 -> (W + ((dot z z)^-1 *: r) *m z^T) *m z = W *m z + r.
Proof. by move=> z0; rewrite rank1_apply scale_dotK. Qed.
Lemma rank1_applyKl m n (W : 'M[R]_(m, n)) (z : 'cV[R]_n) (r : 'cV[R]_m) (K : R) :
  z != 0 -> (W + ((K * dot z z)^-1 *: r) *m z^T) *m z = W *m z + K^-1 *: r.
Proof. by move=> z0; rewrite rank1_apply scale_dotKl. Qed.
Lemma rank1_applyKr m n (W : 'M[R]_(m, n)) (z : 'cV[R]_n) (r : 'cV[R]_m) (K : R) :
  z != 0 -> (W + ((dot z z * K)^-1 *: r) *m z^T) *m z = W *m z + K^-1 *: r.
Proof. by move=> z0; rewrite rank1_apply scale_dotKr. Qed.

(** the patched matrix applied to a multiple [a z] of the reduced input (an expert's input scaled by
    its routing weight): [W' (a z) = W (a z_C)] *)
Lemma rank1_scaledK m n (W : 'M[R]_(m, n)) (z z_C : 'cV[R]_n) (a : R) :
  z != 0 -> (W + ((dot z z)^-1 *: (- (W *m z) + W *m z_C)) *m z^T) *m (a *: z) = W *m (a *: z_C).
Proof. by move=> z0; rewrite -!scalemxAr rank1_applyK // addNKr. Qed.
Lemma rank1_scaledK' m n (W : 'M[R]_(m, n)) (z z_C : 'cV[R]_n) (a : R) :
  z != 0 -> (W + ((dot z z)^-1 *: (W *m z_C - W *m z)) *m z^T) *m (a *: z) = W *m (a *: z_C).
Proof. by move=> z0; rewrite [W *m z_C - _]addrC rank1_scaledK. Qed.

End Rank1.

(** ** Bilinearity of [dot] and [frob], linearity of [mean] *)
Section Bilinear.
Variable R : rcfType.
Implicit Types (m n : nat).

Lemma dotDl n (u v w : 'cV[R]_n) : dot (u + v) w = dot u w + dot v w.
Proof. by rewrite /dot -big_split; apply: eq_bigr => i _; rewrite mxE mulrDl. Qed.
Lemma dotDr n (u v w : 'cV[R]_n) : dot u (v + w) = dot u v + dot u w.
Proof. by rewrite dotC dotDl !(dotC w) !(dotC v). Qed.
Lemma dot0r n (u : 'cV[R]_n) : dot u 0 = 0.
Proof. by rewrite /dot big1 // => i _; rewrite mxE mulr0. Qed.
Lemma dotZl n (s : R) (u v : 'cV[R]_n) : dot (s *: u) v = s * dot u v.
Proof. by rewrite /dot mulr_sumr; apply: eq_bigr => i _; rewrite mxE mulrA. Qed.
(** the rank-1 patch of a gate vector (a row, [w^T z]): [(w + (w^T (z_C - z) / z^T z) z)^T z = w^T z_C] *)
Lemma dot_rank1K n (w z z_C : 'cV[R]_n) :
  z != 0 -> dot ((- dot w z + dot w z_C) *: ((dot z z)^-1 *: z) + w) z = dot w z_C.
Proof. by move/dot_nz=> z0; rewrite dotDl !dotZl mulVf // mulr1 addrC addNKr. Qed.

Lemma frobC m n (A B : 'M[R]_(m, n)) : frob A B = frob B A.
Proof. by apply: eq_bigr => i _; apply: eq_bigr => j _; rewrite mulrC. Qed.
Lemma frobDl m n (A B C : 'M[R]_(m, n)) : frob (A + B) C = frob A C + frob B C.
Proof.
rewrite /frob -big_split; apply: eq_bigr => i _.
by rewrite -big_split; apply: eq_bigr => j _; rewrite mxE mulrDl.
Qed.
Lemma frobDr m n (A B C : 'M[R]_(m, n)) : frob A (B + C) = frob A B + frob A C.
Proof. by rewrite frobC frobDl !(frobC _ A). Qed.
(** [<x z^T, N>_F = x^T (N z)] *)
Lemma frob_outer m n (x : 'cV[R]_m) (z : 'cV[R]_n) (N : 'M[R]_(m, n)) :
  frob (x *m z^T) N = dot x (N *m z).
Proof.
rewrite /frob /dot; apply: eq_bigr => i _; rewrite [(N *m z) i 0]mxE mulr_sumr.
apply: eq_bigr => j _; rewrite mxE big_ord1 mxE -mulrA; congr (_ * _); exact: mulrC.
Qed.
Lemma frob_outer_kill m n (x : 'cV[R]_m) (z : 'cV[R]_n) (N : 'M[R]_(m, n)) :
  N *m z = 0 -> frob (x *m z^T) N = 0.
Proof. by move=> Nz; rewrite frob_outer Nz dot0r. Qed.
Lemma frob_outer_killr m n (x : 'cV[R]_m) (z : 'cV[R]_n) (N : 'M[R]_(m, n)) :
  N *m z = 0 -> frob N (x *m z^T) = 0.
Proof. by move=> Nz; rewrite frobC frob_outer_kill. Qed.

Lemma mean_scale n (s : R) (v : 'cV[R]_n) : mean (s *: v) = s * mean v.
Proof. by rewrite /mean mulrA mulr_sumr; congr (_ / _); apply: eq_bigr => i _; rewrite mxE. Qed.
Lemma mean_add n (u v : 'cV[R]_n) : mean (u + v) = mean u + mean v.
Proof. by rewrite /mean -mulrDl -big_split; congr (_ / _); apply: eq_bigr => i _; rewrite mxE. Qed.
Lemma mean_opp n (u : 'cV[R]_n) : mean (- u) = - mean u.
Proof. by rewrite -scaleN1r mean_scale mulN1r. Qed.
Lemma mean_sub n (u v : 'cV[R]_n) : mean (u - v) = mean u - mean v.
Proof. by rewrite mean_add mean_opp. Qed.
(** the average of a constant vector is the constant: here the dimension must be positive *)
Lemma mean_const n (c : R) : mean (vconst c : 'cV[R]_n.+1) = c.
Proof.
rewrite /mean (eq_bigr (fun _ => c)) => [|i _]; last by rewrite mxE.
by rewrite sumr_const card_ord -[c *+ _]mulr_natr mulfK // pnatr_eq0.
Qed.
Lemma mean_ge0 n (v : 'cV[R]_n) : (forall i, 0 <= v i 0) -> 0 <= mean v.
Proof. by move=> v0; rewrite /mean divr_ge0 ?ler0n // sumr_ge0. Qed.
Lemma mean_sq_ge0 n (v : 'cV[R]_n) : 0 <= mean (vpow v 2).
Proof. by apply: mean_ge0 => i; rewrite mxE sqr_ge0. Qed.
(** the mean square of a multiple: [mean ((s v)^2) = s^2 mean (v^2)] *)
Lemma mean_sq_scale n (s : R) (v : 'cV[R]_n) : mean (vpow (s *: v) 2) = s ^+ 2 * mean (vpow v 2).
Proof.
by rewrite /mean mulrA mulr_sumr; congr (_ / _); apply: eq_bigr => i _; rewrite !mxE exprMn.
Qed.
(** [sqrt (mean (v^2))^2 = mean (v^2)]: a mean square is nonnegative *)
Lemma sqr_sqrt_mean n (v : 'cV[R]_n) : Num.sqrt (mean (vpow v 2)) ^+ 2 = mean (vpow v 2).
Proof. exact/sqr_sqrtr/mean_sq_ge0. Qed.

(** [sqrt (c^2) = c] for [c > 0] *)
Lemma sqrt_sqr_pos (c : R) : 0 < c -> Num.sqrt (c ^+ 2) = c.
Proof. by move=> c0; rewrite sqrtr_sqr gtr0_norm. Qed.
End Bilinear.

(** ** Signs: the lemmas of [ctx_pos] (the facts table of the kernel, as Coq proves them) *)
Section Signs.
Variable R : rcfType.
Implicit Types (a b : R).
Lemma pos_addl a b : 0 < a -> 0 <= b -> 0 < a + b. Proof. by move=> a0 b0; rewrite ltr_paddr. Qed.
Lemma pos_addr a b : 0 <= a -> 0 < b -> 0 < a + b. Proof. by move=> a0 b0; rewrite ltr_paddl. Qed.
Lemma pos_sqrt a : 0 < a -> 0 < Num.sqrt a. Proof. by rewrite sqrtr_gt0. Qed.
Lemma pos_inv a : 0 < a -> 0 < a^-1. Proof. by rewrite invr_gt0. Qed.
Lemma pos_nat (n : nat) : (0 < n)%N -> 0 < n%:R :> R. Proof. by rewrite ltr0n. Qed.
Lemma pos_and a (P : bool) : (0 < a) && P -> 0 < a. Proof. by case/andP. Qed.
Lemma nneg_pos a : 0 < a -> 0 <= a. Proof. exact: Order.POrderTheory.ltW. Qed.
Lemma nneg_sqrt a : 0 <= Num.sqrt a. Proof. exact: sqrtr_ge0. Qed.
Lemma nneg_sq a : 0 <= a ^+ 2. Proof. exact: sqr_ge0. Qed.
Lemma nneg_dot n (v : 'cV[R]_n) : 0 <= dot v v.
Proof. by rewrite /dot sumr_ge0 // => i _; rewrite -expr2 sqr_ge0. Qed.
End Signs.

(** ** Sums over the selected experts *)
Section Sums.
Variable R : rcfType.
(** a sum of [k >= 1] positive terms (softmax gates) is positive *)
Lemma pos_sum_nat (k : nat) (F : nat -> R) :
  (0 < k)%N -> (forall j, 0 < F j) -> 0 < \sum_(1 <= j < k.+1) F j.
Proof.
move=> k0 F0; rewrite big_ltn ?ltnS //; apply: pos_addl; first exact: F0.
by apply: sumr_ge0 => j _; apply: nneg_pos.
Qed.
Lemma idx_pos (k n : nat) : (0 < k <= n)%N -> (0 < k)%N. Proof. by case/andP. Qed.
(** [k] copies of [x]: [x k] *)
Lemma sum_const_nat (k : nat) (x : R) : \sum_(1 <= j < k.+1) x = x * k%:R.
Proof. by rewrite sumr_const_nat subSS subn0 mulr_natr. Qed.
End Sums.

(** ** Tactics *)

(** [ctx_fold]: one spelling per scalar operation (literal powers and multiples unfolded). *)
Ltac ctx_fold :=
  rewrite ?exprS ?expr0 ?mulr1n ?mulrS ?mulr0n ?fold_coord
          ?fold_add ?fold_mul ?fold_opp ?fold_inv ?fold_0 ?fold_1.
Ltac ctx_fold_in H :=
  rewrite ?exprS ?expr0 ?mulr1n ?mulrS ?mulr0n ?fold_coord
          ?fold_add ?fold_mul ?fold_opp ?fold_inv ?fold_0 ?fold_1 in H.

(** [ctx_split_nz]: a nonzero product, inverse or negation gives its nonzero factors. *)
Ltac ctx_split_nz :=
  repeat match goal with
  | H : is_true (_ * _ != 0) |- _ => case: (mul_nzP H) => ? ?; clear H
  | H : is_true (_^-1 != 0) |- _ => move: (inv_nzP H) => ?; clear H
  | H : is_true (- _ != 0) |- _ => move: (opp_nzP H) => ?; clear H
  end.

(** [ctx_facts_at i]: [v i 0 != 0] from every [coords_nz v]; [ctx_facts]: [x != 0] from [0 < x],
    [dot z z != 0] from a vector [z != 0]. [ctx_nz_ready] then brings them to the form [field]
    wants. *)
Ltac ctx_facts_at i :=
  repeat match goal with
  | H : coords_nz ?v |- _ =>
      lazymatch goal with
      | _ : is_true (@fun_of_matrix _ _ _ v i _ != 0) |- _ => fail
      | _ => move: (H i) => ?
      end
  end.

Ltac ctx_facts :=
  repeat match goal with
  | H : is_true (0 < ?x) |- _ =>
      lazymatch goal with _ : is_true (x != 0) |- _ => fail | _ => move: (lt0_nz H) => ? end
  | H : is_true (?z != 0) |- _ =>
      lazymatch type of z with
      | 'cV[_]_ _ =>
          lazymatch goal with _ : is_true (dot z z != 0) |- _ => fail | _ => move: (dot_nz H) => ? end
      end
  end.

(** Rewrite the coordinate lemmas into the scalar nonzero facts, split them into factors, fold
    each into [x <> r0] for [field] (the [!= 0] copies are cleared: [ctx_nz_ready] ends a proof). *)
Ltac ctx_nz_ready :=
  ctx_split_nz;
  repeat match goal with
  | H : is_true (?x != 0) |- _ =>
      lazymatch type of x with
      | matrix _ _ _ => fail
      | _ => first [ progress rewrite ?ctxE in H; ctx_split_nz
                   | let F := fresh "F" in move: (nz_fold H) => F; ctx_fold_in F; clear H ]
      end
  end.

(** Side conditions of [field]: every factor of a denominator is a known nonzero. *)
Ltac ctx_nz_side :=
  repeat match goal with |- _ /\ _ => split end;
  repeat (first [ assumption | apply: rmul_nz | apply: rinv_nz | apply: ropp_nz ]).

(** [ctx_set_sums]: every sum of the goal becomes a local name ([field] does not take a big
    operator as an atom; [set] keeps its value, so the side conditions still see it). *)
Ltac ctx_set_sums :=
  repeat match goal with |- context[@BigOp.bigop ?T ?I ?idx ?r ?F] =>
    let S := fresh "S" in set S := BigOp.bigop idx r F end.

(** [ctx_scalar]: a scalar identity of [R] by [field], denominators from the hypotheses. *)
Ltac ctx_scalar :=
  apply: ctx_eqR; ctx_fold; ctx_set_sums; field; solve [ctx_nz_side].

(** [ctx_replace E X]: rewrite [E : X = Y] in the goal and in every other hypothesis that mentions
    [X] (reverted, rewritten, reintroduced under fresh names: it is used only inside terminal
    tactics). *)
Ltac ctx_replace E X :=
  repeat match goal with
  | H : context[X] |- _ => assert_fails (constr_eq H E); revert H
  end;
  rewrite E; clear E; intros.

(** [ctx_num0] / [ctx_vec0]: a scalar identity from the hypotheses, by [field]; a vector identity,
    coordinate by coordinate. *)
(** [ctx_pos] proves [0 < x] and [ctx_nneg] [0 <= x] from the hypotheses and the facts table:
    [0 < 1], a hypothesis [0 < x] or [forall x, 0 < f x] (exp), sums, products, inverses and square
    roots of positives, [n%:R] of a positive [n], squares, [dot v v], [mean (v^2)], [Num.sqrt]. *)
Ltac ctx_pos :=
  lazymatch goal with |- is_true (0 < _) => idtac end;
  first [ assumption
        | exact: ltr01
        | match goal with H : forall x : _, is_true (0 < ?f x) |- is_true (0 < ?f _) => exact: H end
        | apply: pos_sqrt; ctx_pos
        | apply: pos_inv; ctx_pos
        | apply: mulr_gt0; ctx_pos
        | apply: pos_addl; [ctx_pos | ctx_nneg]
        | apply: pos_addr; [ctx_nneg | ctx_pos]
        | apply: pos_nat; ctx_posn
        | apply: pos_sum_nat; [ctx_posn | move=> ?; ctx_pos]
        | match goal with H : forall (l : _) (j : nat), _ |- _ => exact: (pos_and (H _ _)) end ]
with ctx_nneg :=
  lazymatch goal with |- is_true (0 <= _) => idtac end;
  first [ assumption
        | exact: nneg_sqrt
        | exact: nneg_sq
        | exact: nneg_dot
        | exact: mean_sq_ge0
        | apply: nneg_pos; ctx_pos
        | apply: addr_ge0; ctx_nneg
        | apply: mulr_ge0; ctx_nneg ]
with ctx_posn :=
  first [ assumption | by []
        | match goal with H : is_true ((0 < _)%N && _) |- _ => exact: (idx_pos H) end ].

(** [ctx_inv_facts]: [0 < x] for every inverse [x^-1] of the goal whose positivity [ctx_pos] proves
    (the denominators the kernel discharged from its facts table: [sqrt (eps + mean h^2)],
    [1 + exp x], a sum of gates). *)
Ltac ctx_inv_facts :=
  repeat match goal with
  | |- context[?x^-1] =>
      lazymatch goal with
      | _ : is_true (x != 0) |- _ => fail
      | _ : is_true (0 < x) |- _ => fail
      | _ => let P := fresh "P" in assert (P : 0 < x) by ctx_pos
      end
  end.

Ltac ctx_num0 := ctx_inv_facts; ctx_facts; ctx_nz_ready; ctx_scalar.
Ltac ctx_vec0 :=
  ctx_inv_facts; ctx_facts; apply/colP; let i := fresh "i" in intro i; ctx_facts_at i; ctx_nz_ready;
  rewrite ?ctxE; ctx_scalar.

(** [ctx_congr]: two applications of one atom-forming head ([Num.sqrt], [mean], [W *m _], [vmap f],
    an opaque function of the context) whose arguments are spelled differently but are equal
    (by [ctx_num0] for scalars, [ctx_vec0] for vectors) become one. Every subterm is visited, so
    a difference deep inside is repaired where it occurs; the argument proofs themselves do not
    recurse (that would search exponentially many failing pairs). *)
Ltac ctx_head t := lazymatch t with ?f _ => ctx_head f | _ => t end.
Ltac ctx_same_head X Y := let a := ctx_head X in let b := ctx_head Y in constr_eq a b.
Ltac ctx_congr_by E X Y tac :=
  assert_fails (constr_eq X Y); ctx_same_head X Y; assert (E : X = Y) by tac; ctx_replace E X.
Ltac ctx_congr :=
  repeat match goal with
  | |- context[Num.sqrt ?X] => match goal with |- context[Num.sqrt ?Y] =>
        let E := fresh "E" in ctx_congr_by E X Y ctx_num0 end
  | |- context[mean ?X] => match goal with |- context[mean ?Y] =>
        let E := fresh "E" in ctx_congr_by E X Y ctx_vec0 end
  | |- context[@mulmx _ _ _ _ ?M ?X] => match goal with |- context[@mulmx _ _ _ _ M ?Y] =>
        let E := fresh "E" in ctx_congr_by E X Y ctx_vec0 end
  | |- context[vmap ?f ?X] => match goal with |- context[vmap f ?Y] =>
        let E := fresh "E" in ctx_congr_by E X Y ctx_vec0 end
  | f : _ -> _ |- _ => match goal with |- context[f ?X] => match goal with |- context[f ?Y] =>
        let E := fresh "E" in ctx_congr_by E X Y ltac:(first [ctx_num0 | ctx_vec0]) end end
  end.

(** [ctx_num]: a scalar identity; [ctx_vec]: a vector identity coordinate by coordinate. The flat
    tactic first; when it fails, again after [ctx_congr] at the vector level and at the coordinates
    (a spelling difference inside an atom costs a search over pairs of atoms with one head, so only
    then; [ctx_vec_congr] goes there directly). *)
Ltac ctx_num := first [ ctx_num0 | ctx_facts; ctx_congr; ctx_inv_facts; ctx_facts; ctx_nz_ready; ctx_scalar ].
Ltac ctx_vec_congr :=
  ctx_facts; ctx_congr;
  apply/colP; let i := fresh "i" in intro i; ctx_facts_at i; rewrite ?ctxE;
  ctx_congr; ctx_inv_facts; ctx_facts; ctx_nz_ready; ctx_scalar.
Ltac ctx_vec := first [ ctx_vec0 | ctx_vec_congr ].

(** [ctx_linear]: push [*m] through sums, negations and scalings, and apply outer products
    ([(x z^T) v = (z^T v) x]), so that the remaining [W *m v] have no linear structure left. *)
Ltac ctx_linear :=
  rewrite ?mulmxDl ?mulmxDr ?mulmxBl ?mulmxBr ?mulNmx ?mulmxN ?outer_apply -?scalemxAl -?scalemxAr
          ?mul0mx ?mulmx0.

(** [ctx_rank1]: every [(W + outer ((dot z z)^-1 *: r) z) *m z] becomes [W *m z + r] ([z != 0] from
    the context; [r / (K z^T z)] gives [r / K]), and [W *m z + (W *m z_C - W *m z)] (or [- W *m z + W *m z_C], or [W *m (z_C - z)])
    becomes [W *m z_C]; a patched gate vector [w'^T z] becomes [w^T z_C] ([dot_rank1K]); repeated, so that a patch applied to a patched activation (W_down after
    W_gate, W_up) is simplified after the inner ones. *)
Ltac ctx_assumption :=
  try (lazymatch goal with |- is_true (_ != 0) =>
         first [ assumption | match goal with H : forall e : nat, is_true (_ != 0) |- _ => exact: H end ] end).
Ltac ctx_refl := try (lazymatch goal with |- ?a = ?a => reflexivity end).
Ltac ctx_rank1_step :=
  rewrite ?rank1_applyK;
  (* the scaled denominators only where they occur: unifying [?K * dot ?z ?z] with [dot z z] unfolds
     [dot] into its sum, which costs tens of seconds *)
  repeat match goal with
  | |- context[(?W + ((?K * dot ?z ?z)^-1 *: ?r) *m ?z^T) *m ?z] =>
      rewrite (@rank1_applyKl _ _ _ W z r K); last ctx_assumption
  | |- context[(?W + ((dot ?z ?z * ?K)^-1 *: ?r) *m ?z^T) *m ?z] =>
      rewrite (@rank1_applyKr _ _ _ W z r K); last ctx_assumption
  | Hz : is_true (?z != 0) |- context[dot ((- dot ?w ?z + dot ?w ?zc) *: ((dot ?z ?z)^-1 *: ?z) + ?w) ?z] =>
      rewrite (@dot_rank1K _ _ w z zc Hz)
  end;
  ctx_assumption; rewrite ?mulmx_subK ?add_subK ?addNKr;
  ctx_refl.
Ltac ctx_rank1 := repeat (progress ctx_rank1_step).

(** [ctx_eqs]: rewrite the goal with every hypothesis [a = b] whose left side is not a variable
    (those are [subst]ituted), occurs in the goal, and does not occur in [b]. *)
Ltac ctx_eqs :=
  repeat match goal with
  | H : ?a = ?b |- context[?a] =>
      assert_fails (is_var a);
      lazymatch b with context[a] => fail | _ => rewrite H end
  end.

(** [ctx_kill]: [<x z^T, N>_F = 0] and [<N, x z^T>_F = 0] for every hypothesis [N z = 0]. *)
Ltac ctx_kill :=
  repeat match goal with
  | H : ?N *m ?z = 0 |- context[frob (_ *m ?z^T) ?N] => rewrite (frob_outer_kill _ H)
  | H : ?N *m ?z = 0 |- context[frob ?N (_ *m ?z^T)] => rewrite (frob_outer_killr _ H)
  end.


(** ** Mixtures of experts

    The output is a sum over the selected experts [\sum_(1 <= j < k.+1)] of terms in the families
    [W_down e], [a' e], ... defined by hypotheses [forall e, X e = rhs e].  [ctx_fam] rewrites with
    every family definition at its argument (inside a sum's body, where the argument depends on the
    bound rank [j]), except the families a hypothesis [forall e, X e != 0] keeps as atoms
    ([a_C e]); [ctx_refold] folds those back once the rank-1 lemma has made the patched activation
    the contextual one. *)
Ltac ctx_fam :=
  repeat match goal with
  | H : forall e : nat, ?X e = _ |- context[?X ?a] =>
      lazymatch goal with _ : forall e : nat, is_true (X e != 0) |- _ => fail | _ => rewrite (H a) end
  end.
Ltac ctx_refold :=
  repeat match goal with
  | H : forall e : nat, ?X e = _, _ : forall e : nat, is_true (?X e != 0) |- _ => progress rewrite -?H
  end.
(** one term of the sum: patched to the contextual one plus the output patch's share, and split *)
(** (instantiated by matching first: unifying [?a *: ?z] with every product unfolds the vocabulary) *)
Ltac ctx_rank1_scaled :=
  repeat match goal with
  | Hz : is_true (?z != 0)
    |- context[(?W + ((dot ?z ?z)^-1 *: (- (?W *m ?z) + ?W *m ?zc)) *m ?z^T) *m (?a *: ?z)] =>
      rewrite (@rank1_scaledK _ _ _ W z zc a Hz)
  | Hz : is_true (?z != 0)
    |- context[(?W + ((dot ?z ?z)^-1 *: (?W *m ?zc - ?W *m ?z)) *m ?z^T) *m (?a *: ?z)] =>
      rewrite (@rank1_scaledK' _ _ _ W z zc a Hz)
  end.
Ltac ctx_moe_body :=
  ctx_fam; ctx_rank1_scaled; ctx_rank1; ctx_refold; ctx_rank1; rewrite ?scalerDr ?scalerA.
(** [ctx_moe]: both sums term by term, split, the output patch's shares summed
    ([sum_j c_j delta = (sum_j c_j) delta], the gates' sum then cancels), coordinate by coordinate. *)
Ltac ctx_moe :=
  subst; ctx_rank1;
  under eq_bigr => ? _ do ctx_moe_body;
  symmetry; under eq_bigr => ? _ do ctx_moe_body; symmetry;
  rewrite ?big_split /= -?scaler_suml -?mulr_suml ?sum_const_nat;
  ctx_vec.

(** [ctx_block]: the default proof of a block or multi-layer theorem.  With per-expert families (a
    mixture of experts) [ctx_moe]; otherwise substitute the definitions, apply the rank-1 lemma to
    every patched matrix, and check what remains coordinate by coordinate (nothing remains when
    the two sides are then the same term). *)
Ltac ctx_block :=
  lazymatch goal with
  | _ : forall e : nat, _ = _ |- _ => ctx_moe
  | _ => subst; ctx_rank1; ctx_vec
  end.
