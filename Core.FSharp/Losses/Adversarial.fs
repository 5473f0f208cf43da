/// Adversarial losses on discriminator scores (logits): the hinge loss and BigBiGAN's joint
/// (x, z) form of it, and the non-saturating standard GAN loss.
module Ssl.Core.Losses.Adversarial

open TorchSharp
open type TorchSharp.torch
open type TorchSharp.torch.nn.functional
open Ssl.Core.Shape

/// The discriminator's hinge loss (Lim & Ye 2017; as in BigGAN and BigBiGAN):
/// mean relu(1 - s_real) + mean relu(1 + s_fake).
/// `realScores`: any shape, at least one element; `fakeScores`: any shape, at least one
/// element; result: scalar ≥ 0, 0 once every real score is ≥ 1 and every fake score ≤ -1.
let hingeDiscriminator (realScores: Tensor) (fakeScores: Tensor) : Tensor =
    Checks.nonEmpty "realScores" realScores
    Checks.nonEmpty "fakeScores" fakeScores
    use scope = NewDisposeScope()
    let loss = relu(1.0 - realScores).mean() + relu(fakeScores + 1.0).mean()
    loss.MoveToOuterDisposeScope()

/// The generator's hinge loss: -mean s_fake. `fakeScores`: any shape, at least one element;
/// result: scalar.
let hingeGenerator (fakeScores: Tensor) : Tensor =
    Checks.nonEmpty "fakeScores" fakeScores
    use scope = NewDisposeScope()
    (-fakeScores.mean()).MoveToOuterDisposeScope()

/// The standard GAN discriminator loss on logits (Goodfellow et al. 2014, eq. 1, as binary
/// cross-entropy): mean softplus(-s_real) + mean softplus(s_fake), i.e.
/// -mean log σ(s_real) - mean log(1 - σ(s_fake)).
/// `realScores`, `fakeScores`: any shape, at least one element; result: scalar > 0.
let nonSaturatingDiscriminator (realScores: Tensor) (fakeScores: Tensor) : Tensor =
    Checks.nonEmpty "realScores" realScores
    Checks.nonEmpty "fakeScores" fakeScores
    use scope = NewDisposeScope()
    let loss = softplus(-realScores).mean() + softplus(fakeScores).mean()
    loss.MoveToOuterDisposeScope()

/// The non-saturating generator loss (Goodfellow et al. 2014, Sec. 3: maximise log D(G(z))
/// rather than minimise log(1 - D(G(z)))): mean softplus(-s_fake) = -mean log σ(s_fake).
/// `fakeScores`: any shape, at least one element; result: scalar > 0.
let nonSaturatingGenerator (fakeScores: Tensor) : Tensor =
    Checks.nonEmpty "fakeScores" fakeScores
    use scope = NewDisposeScope()
    softplus(-fakeScores).mean().MoveToOuterDisposeScope()

/// BigBiGAN's three discriminator scores for a batch of (x, z) pairs (Donahue & Simonyan 2019,
/// Sec. 2): `X` = s_x from the image alone, `Z` = s_z from the latent alone, `XZ` = s_xz from
/// the joint pair. Each `(N)`; the three share N.
type BigBiGanScores = { X: Tensor; Z: Tensor; XZ: Tensor }

/// BigBiGAN's two losses, each a scalar: the discriminator's and the encoder's and generator's.
type BigBiGanLosses = { Discriminator: Tensor; EncoderGenerator: Tensor }

let private expectScores (what: string) (scores: BigBiGanScores) =
    expect $"{what}.X" [| Any |] scores.X
    Checks.nonEmpty $"{what}.X" scores.X
    expect $"{what}.Z" [| Exactly scores.X.shape[0] |] scores.Z
    expect $"{what}.XZ" [| Exactly scores.X.shape[0] |] scores.XZ

/// BigBiGAN's losses (Donahue & Simonyan 2019, eq. 3-5). Real pairs are (x ~ data, ẑ = E(x)),
/// label y = +1; fake pairs are (x̂ = G(z), z ~ prior), label y = -1. Per pair,
/// ℓ_D = h(y s_x) + h(y s_z) + h(y s_xz) with the hinge h(t) = max(0, 1 - t), and
/// ℓ_EG = y (s_x + s_z + s_xz) (no hinge); each loss is the mean over real pairs plus the mean
/// over fake pairs. Both come from the same scores: backpropagate `Discriminator` into the
/// discriminator's parameters only and `EncoderGenerator` into the encoder's and generator's
/// only (separate passes, or detach the other side's inputs).
/// `real`: scores on N real pairs; `fake`: scores on M fake pairs; result: both scalars.
let bigBiGan (real: BigBiGanScores) (fake: BigBiGanScores) : BigBiGanLosses =
    expectScores "real" real
    expectScores "fake" fake
    use scope = NewDisposeScope()
    let hingeSum (y: float) (s: BigBiGanScores) =
        relu(1.0 - y * s.X) + relu(1.0 - y * s.Z) + relu(1.0 - y * s.XZ)
    let scoreSum (s: BigBiGanScores) = s.X + s.Z + s.XZ
    let discriminator = (hingeSum 1.0 real).mean() + (hingeSum -1.0 fake).mean()
    let encoderGenerator = (scoreSum real).mean() - (scoreSum fake).mean()
    { Discriminator = discriminator.MoveToOuterDisposeScope()
      EncoderGenerator = encoderGenerator.MoveToOuterDisposeScope() }
