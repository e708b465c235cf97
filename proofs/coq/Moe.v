(** * The output patch of a mixture of experts (arXiv:2511.17864, appendix lemma for MoE outputs).

    The block's MLP output is the normalized gated sum over its k+1 active experts,
    [h = (Σ_j g_j W_down(e_j) a(e_j)) / Σ_j g_j], with [e_j] the j-th selected expert and [g_j] its
    gate.  Once the router and every expert's input maps are patched (rank-1 lemma), the selection,
    the gates and the activations are the contextual ones; patching every expert's [W_down] by
    [δ a_C(e)^T / |a_C(e)|^2] then adds exactly [δ] to the output, whatever the gates are, as long as
    their sum is nonzero (softmax gates are positive) and every [a_C(e)] is nonzero.

    The statement is written here by hand in the printed vocabulary (families are [nat -> T], sums
    are mathcomp's [\sum]); the selection [idx] and the gates [g] are arbitrary. *)

From Coq Require Import Ring Field.
From mathcomp Require Import all_ssreflect all_algebra.
From CtxPatch Require Import CtxPatch.

Set Implicit Arguments.
Unset Strict Implicit.
Unset Printing Implicit Defensive.
Import GRing.Theory Num.Theory.
Local Open Scope ring_scope.

Section Moe.
Variable R : rcfType.

Theorem moe_output_patch (d k m : nat)
  (W_down W'_down : nat -> 'M[R]_(d.+1, m.+1)) (a_C : nat -> 'cV[R]_m.+1) (idx : nat -> nat)
  (g : nat -> R) (delta h_C h' : 'cV[R]_d.+1)
  (H1 : forall e : nat,
        W'_down e = madd (W_down e) (outer (vscale (sinv (dot (a_C e) (a_C e))) delta) (a_C e)))
  (H2 : h_C = vscale (sinv (\sum_(j < k.+1) g j))
                     (\sum_(j < k.+1) vscale (g j) (matvec (W_down (idx j)) (a_C (idx j)))))
  (H3 : h' = vscale (sinv (\sum_(j < k.+1) g j))
                    (\sum_(j < k.+1) vscale (g j) (matvec (W'_down (idx j)) (a_C (idx j)))))
  (H4 : forall e : nat, a_C e != 0)
  (H5 : \sum_(j < k.+1) g j != 0) :
  h' = vadd h_C delta.
Proof.
subst.
under [\sum_(j < k.+1) vscale (g j) _]eq_bigr => j _ do rewrite H1 rank1_apply (scale_dotK _ (H4 _)) scalerDr.
by rewrite big_split /= -scaler_suml scalerDr scalerA mulVf // scale1r.
Qed.

End Moe.

Print Assumptions moe_output_patch.
