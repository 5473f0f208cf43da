/// Virtual adversarial training (Miyato, Maeda, Koyama & Ishii 2018, "Virtual Adversarial
/// Training: A Regularization Method for Supervised and Semi-Supervised Learning", TPAMI): the
/// local distributional smoothness penalty KL(p(y|x) || p(y|x + r_vadv)) with r_vadv the
/// direction in which the prediction changes fastest, found by power iteration.
module Ssl.Core.Losses.Vat

open TorchSharp
open type TorchSharp.torch
open Ssl.Core.Shape

/// Each example of `d` scaled to unit L2 norm over all its non-batch dimensions, as the VAT
/// authors' code does: first divided by its largest absolute entry, so that the tiny gradients of
/// the finite-difference step (of order xi) do not underflow when squared.
/// `d: (N, ...)` → same shape; an all-zero example stays zero.
let private unitPerExample (d: Tensor) =
    use scope = NewDisposeScope()
    let dims = [| 1L .. d.dim () - 1L |]
    let scaled = d / (d.abs().amax(dims, keepdim = true) + 1e-12)
    (scaled / (scaled.square().sum(dims, keepdim = true) + 1e-6).sqrt()).MoveToOuterDisposeScope()

/// The virtual adversarial direction by the power iteration of Miyato et al. 2018, Sec. 3.3
/// (eq. 8-12, the algorithm of Sec. 3.3 with K = `iterations`): from d = `initial` normalised,
/// K times d <- normalise(∇_r D(x, r)|_{r = xi·d}) with D(x, r) = KL(p(y|x) || p(y|x + r)) and
/// p(y|x) = softmax(`cleanLogits`) held fixed. The gradient at r = xi·d is, to first order,
/// xi·H·d with H the Hessian of D at r = 0 (eq. 10-11: D's gradient vanishes at r = 0), so each
/// step is one power-iteration step towards H's dominant eigenvector. The divergence is summed
/// over examples, so each example's gradient does not shrink with the batch size.
/// `classifier`: inputs → logits; `inputs: (N, ...)`; `cleanLogits: (N, C)` = classifier(inputs)
/// (only its value is used); `initial: (N, ...)` like `inputs` (the paper draws it from N(0, I));
/// result: (N, ...) with every example of unit L2 norm, detached. xi > 0 (paper: 1e-6), K ≥ 1
/// (paper: K = 1 suffices).
let perturbationDirection (xi: float) (iterations: int) (classifier: Tensor -> Tensor) (inputs: Tensor) (cleanLogits: Tensor)
                          (initial: Tensor) : Tensor =
    Checks.positive "xi" xi
    if iterations < 1 then invalidArg "iterations" $"iterations: expected at least 1 power-iteration step, found {iterations}"
    Checks.nonEmpty "inputs" inputs
    expect "cleanLogits" [| Exactly inputs.shape[0]; Any |] cleanLogits
    expect "initial" (inputs.shape |> Array.map Exactly) initial
    use scope = NewDisposeScope()
    let x = inputs.detach()
    let clean = cleanLogits.detach()
    let mutable direction = unitPerExample (initial.detach())
    for _ in 1 .. iterations do
        let r = (direction * xi).requires_grad_(true)
        let divergence = Transformation.klDivergence clean (classifier (x + r)) * System.Convert.ToDouble x.shape[0]
        let gradient = torch.autograd.grad([| divergence |], [| r |])[0]
        direction <- unitPerExample (gradient.detach())
    direction.MoveToOuterDisposeScope()

/// The VAT loss, Miyato et al. 2018 eq. (5) with r_vadv of eq. (12): r_vadv = epsilon·d with d
/// from `perturbationDirection` (starting from a standard normal draw of `generator`), and
/// KL(p(y|x) || p(y|x + r_vadv)) averaged over the batch, p(y|x) = softmax(`cleanLogits`) held
/// fixed (the paper's current estimate p(y|x, θ̂)); the gradient flows through the classifier
/// at x + r_vadv only. `epsilon`: the L2 norm of each example's perturbation, in input units
/// (paper: 2.0 on MNIST's [0, 1] pixels, 6.0 on ZCA-whitened CIFAR-10).
/// `inputs: (N, ...)`; `cleanLogits: (N, C)` = classifier(inputs); result: scalar ≥ 0.
let virtualAdversarialLoss (xi: float) (epsilon: float) (iterations: int) (generator: Generator)
                           (classifier: Tensor -> Tensor) (inputs: Tensor) (cleanLogits: Tensor) : Tensor =
    Checks.positive "epsilon" epsilon
    use scope = NewDisposeScope()
    let initial = Ssl.Core.Transforms.Draw.rows generator 0L inputs.shape[0] (fun n ->
        torch.randn(Array.append [| n |] inputs.shape[1..], dtype = inputs.dtype, device = inputs.device, generator = generator))
    let direction = perturbationDirection xi iterations classifier inputs cleanLogits initial
    let adversarial = inputs.detach() + direction * epsilon
    (Transformation.klDivergence (cleanLogits.detach()) (classifier adversarial)).MoveToOuterDisposeScope()
