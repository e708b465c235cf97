(** * Theorem 2 / Algorithm 1 of arXiv:2511.17864, by induction over any number of layers.

    The kernel states the multi-layer theorem at a generic layer l ([multilayer_gemma3], printed
    into theorems/multilayer_gemma3.v by [ctxpatch prove --coq DIR]: the block theorem at
    u := u_l, delta := u_C,l - u_l).  Here the same argument is
    carried through a whole stack, by induction on the number of layers, in two forms:

    - [layerwise]: any block whose per-layer theorem holds (as a hypothesis) — the reduced run,
      each layer patched from the actual states of both runs at that layer, equals the contextual
      run after every layer;
    - [gemma3_stack]: a stack of Gemma-3 blocks (pre-norm RMSNorm with scale 1 + w_pre, gated
      MLP with an arbitrary sigma, post-norm RMSNorm with scale 1 + w_post, residual), arbitrary
      token mixers (attention maps) per layer, the rank-1 patches on W_gate and W_up and the scale
      patch w_post + (u_C - u) ./ f(h_C) of Theorem 1: equal states after every layer, under the
      side conditions of Theorem 1 at every layer (z_l != 0, every coordinate of f(h_C,l) nonzero).

    Statements here are written by hand (they are not printed from the kernel); the proofs use
    only [CtxPatch.v]. *)

From Coq Require Import Ring Field.
From mathcomp Require Import all_ssreflect all_algebra.
From CtxPatch Require Import CtxPatch.

Set Implicit Arguments.
Unset Strict Implicit.
Unset Printing Implicit Defensive.
Import GRing.Theory Num.Theory.
Local Open Scope ring_scope.

(** ** Any block: the per-layer theorem gives every layer *)
Section Layerwise.
Variables (S : Type) (P : Type).

(** [s l] / [c l]: the states of the reduced (patched, no context) and contextual runs after l
    layers. [patch l x y]: the patch of layer l, computed from the actual states x and y of the two
    runs; [step l p x]: layer l with parameters p on state x (reduced run), [stepC l y]: layer l
    of the contextual run. The per-layer theorem ([block]) may use that the states agree (a
    parallel block's MLP sees the layer input itself). *)
Theorem layerwise (s c : nat -> S) (patch : nat -> S -> S -> P) (step : nat -> P -> S -> S)
  (stepC : nat -> S -> S) (cond : nat -> S -> S -> Prop) :
  s 0%N = c 0%N ->
  (forall l, s l.+1 = step l (patch l (s l) (c l)) (s l)) ->
  (forall l, c l.+1 = stepC l (c l)) ->
  (forall l x y, x = y -> cond l x y -> step l (patch l x y) x = stepC l y) ->
  (forall l, cond l (s l) (c l)) ->
  forall l, s l = c l.
Proof.
move=> s0 sS cS block ok; elim=> [//|l IH].
by rewrite sS cS; apply: block.
Qed.

End Layerwise.

(** ** A stack of Gemma-3 blocks *)
Section Gemma3Stack.
Variable R : rcfType.
Add Field ctx_field : (ctx_field_theory R).
Variables (d m : nat).
Local Notation vec := 'cV[R]_d.+1.
Local Notation mat := 'M[R]_(m.+1, d.+1).
Local Notation matT := 'M[R]_(d.+1, m.+1).

(** [v / sqrt(mean(v^2) + eps)] *)
Definition rms (eps : R) (v : vec) : vec := vscale (sinv (ssqrt (sadd (mean (vpow v 2)) eps))) v.
(** the pre-norm with scale [1 + w] *)
Definition prenorm (w : vec) (eps : R) (u : vec) : vec := had (vadd (vconst 1) w) (rms eps u).
(** the gated MLP [W_down (sigma(W_gate z) ⊙ (W_up z))] *)
Definition gated_mlp (sigma : R -> R) (Wg Wu : mat) (Wd : matT) (z : vec) : vec :=
  matvec Wd (had (vmap sigma (matvec Wg z)) (matvec Wu z)).
(** the post-norm with scale [1 + w], then the residual *)
Definition post_residual (w : vec) (eps : R) (h u : vec) : vec := vadd (had (vadd (vconst 1) w) (rms eps h)) u.
(** the rank-1 patch [W + W (z_C - z) z^T / (z^T z)] *)
Definition rank1 (W : mat) (z zc : vec) : mat :=
  madd W (outer (vscale (sinv (dot z z)) (matvec W (vsub zc z))) z).

(** One layer's parameters. *)
Record layer := Layer {
  W_gate : mat; W_up : mat; W_down : matT; w_pre : vec; eps_pre : R; w_post : vec; eps_post : R }.

(** The block on the MLP input [u] (the residual stream after the token mixer), with the post-norm
    scale [w]: [u + (1 + w) ⊙ rms(h)], [h] the MLP of the pre-normed [u]. *)
Definition block (sigma : R -> R) (L : layer) (w : vec) (Wg Wu : mat) (z u : vec) : vec :=
  post_residual w (eps_post L) (gated_mlp sigma Wg Wu (W_down L) z) u.

(** Theorem 1 with named pieces: the patched block on [u] gives the contextual block on [u_C]. *)
Lemma gemma3_block (sigma : R -> R) (L : layer) (u uC z zC fC : vec) :
  z = prenorm (w_pre L) (eps_pre L) u ->
  zC = prenorm (w_pre L) (eps_pre L) uC ->
  fC = rms (eps_post L) (gated_mlp sigma (W_gate L) (W_up L) (W_down L) zC) ->
  z != 0 -> coords_nz fC ->
  block sigma L (vadd (w_post L) (ediv (vsub uC u) fC)) (rank1 (W_gate L) z zC) (rank1 (W_up L) z zC) z u =
  block sigma L (w_post L) (W_gate L) (W_up L) zC uC.
Proof.
move=> _ _ -> z0 fC0; rewrite /block /post_residual /gated_mlp /rank1 /rms in fC0 *.
ctx_rank1.
ctx_vec.
Qed.

Variables (sigma : R -> R) (layers : nat -> layer).
(** the token mixers of layer l without and with the context: arbitrary maps *)
Variables (A A_C : nat -> vec -> vec).

(** What the two runs compute at layer [l] from the states [x] (reduced) and [y] (contextual). *)
Definition u_at l (x : vec) := A l x.
Definition uC_at l (y : vec) := A_C l y.
Definition z_at l x := prenorm (w_pre (layers l)) (eps_pre (layers l)) (u_at l x).
Definition zC_at l y := prenorm (w_pre (layers l)) (eps_pre (layers l)) (uC_at l y).
Definition fC_at l y :=
  rms (eps_post (layers l)) (gated_mlp sigma (W_gate (layers l)) (W_up (layers l)) (W_down (layers l)) (zC_at l y)).

(** The contextual run: layer l on the contextual mixer's output. *)
Definition ctx_step l (y : vec) : vec :=
  let L := layers l in block sigma L (w_post L) (W_gate L) (W_up L) (zC_at l y) (uC_at l y).

(** The reduced run: layer l patched from the actual states of both runs at layer l
    (Algorithm 1: never from an unpatched pass). *)
Definition patched_step l (x y : vec) : vec :=
  let L := layers l in
  block sigma L (vadd (w_post L) (ediv (vsub (uC_at l y) (u_at l x)) (fC_at l y)))
        (rank1 (W_gate L) (z_at l x) (zC_at l y)) (rank1 (W_up L) (z_at l x) (zC_at l y))
        (z_at l x) (u_at l x).

(** Theorem 2: every layer of the patched reduced run equals the contextual run, for a stack of
    any depth, under Theorem 1's side conditions at every layer. *)
Theorem gemma3_stack (s c : nat -> vec) :
  s 0%N = c 0%N ->
  (forall l, s l.+1 = patched_step l (s l) (c l)) ->
  (forall l, c l.+1 = ctx_step l (c l)) ->
  (forall l, z_at l (s l) != 0) ->
  (forall l, coords_nz (fC_at l (c l))) ->
  forall l, s l = c l.
Proof.
move=> s0 sS cS z0 fC0; elim=> [//|l IH].
rewrite sS cS; apply: gemma3_block; [by [] | by [] | by [] | exact: z0 | exact: fC0].
Qed.

End Gemma3Stack.

Print Assumptions layerwise.
Print Assumptions gemma3_block.
Print Assumptions gemma3_stack.
