/// Mutual-information estimators from critic scores.
module Ssl.Core.Losses.MutualInformation

open TorchSharp
open type TorchSharp.torch
open type TorchSharp.torch.nn.functional

/// The Jensen-Shannon mutual-information estimator of Deep InfoMax (Hjelm et al. 2019, eq. 4):
/// Î = E_P[-softplus(-T)] - E_N[softplus(T)], the means taken over the critic's scores T on
/// positive (joint) and negative (product of marginals) pairs. It is an estimate to maximise:
/// train with -Î as the loss.
/// Range: both terms are < 0, so Î < 0 always, and Î → 0 only when positives score → +∞ and
/// negatives → -∞. Its supremum over critics is 2 JSD(P ‖ N) - log 4 (the GAN discriminator's
/// optimum, Nowozin et al. 2016), which lies in [-log 4, 0]. A constant critic T ≡ c gives
/// -softplus(-c) - softplus(c), at most -log 4 (reached at c = 0). DIM's code adds log 2 to each
/// term (values shifted by log 4, same gradients); this is the paper's form.
/// `positiveScores`: any shape, at least one element; `negativeScores`: any shape, at least one
/// element; result: scalar.
let jensenShannon (positiveScores: Tensor) (negativeScores: Tensor) : Tensor =
    Checks.nonEmpty "positiveScores" positiveScores
    Checks.nonEmpty "negativeScores" negativeScores
    use scope = NewDisposeScope()
    let estimate = (-softplus(-positiveScores)).mean() - softplus(negativeScores).mean()
    estimate.MoveToOuterDisposeScope()
