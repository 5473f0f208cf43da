"""Expected values for tests/Core/LossTests.fs ("pytorch reference"), computed with PyTorch in
float64 by implementations written from the papers' reference code, independently of the F# ones.

Run:  /usr/bin/python3 tests/Core/reference/losses_reference.py > tests/Core/reference/losses_reference.txt
(Debian's interpreter, with apt-get install python3-torch). The inputs are exact binary fractions from a closed formula,
reproduced by `referenceInput` in LossTests.fs; the printed block is pasted there.
"""
import math

import torch
import torch.nn.functional as F

torch.set_default_dtype(torch.float64)


def reference_input(rows, cols, seed, scale=1.0):
    """Same as LossTests.referenceInput: ((37 i + 23 j + 11 seed) mod 97 - 48) / 32 * scale, exact
    binary fractions in [-1.5, 1.5] so that both languages start from identical doubles."""
    return torch.tensor([[((37 * i + 23 * j + 11 * seed) % 97 - 48) / 32 * scale
                          for j in range(cols)] for i in range(rows)])


results = {}

# InfoNCE, MoCo's pseudo-code (He et al. 2020, Algorithm 1).
q = F.normalize(reference_input(4, 5, 1), dim=1)
k = F.normalize(reference_input(4, 5, 2), dim=1)
queue = F.normalize(reference_input(6, 5, 3), dim=1)
l_pos = torch.einsum("nc,nc->n", q, k).unsqueeze(-1)
l_neg = torch.einsum("nc,kc->nk", q, queue)
logits = torch.cat([l_pos, l_neg], dim=1) / 0.2
results["infoNce"] = F.cross_entropy(logits, torch.zeros(4, dtype=torch.long)).item()

# NT-Xent as SimCLR's paper writes it (Chen et al. 2020, Algorithm 1): l(i, j) over all 2N anchors.
z = torch.cat([F.normalize(reference_input(4, 5, 4), dim=1), F.normalize(reference_input(4, 5, 5), dim=1)])
n = 4
sim = z @ z.T / 0.5
def l(i, j):
    others = torch.stack([sim[i, m] for m in range(2 * n) if m != i])
    return -(sim[i, j] - torch.logsumexp(others, 0))
results["infoNceInBatch"] = (sum(l(i, i + n) + l(i + n, i) for i in range(n)) / (2 * n)).item()

# NCE, lemniscate's NCECriterion (Wu et al. 2018 code), without its 1e-7 eps; Z as its NCEAverage.
tau, bank, k_noise = 0.1, 4096, 5
pn = 1.0 / bank
similarities = torch.cat([reference_input(3, 1, 6), reference_input(3, k_noise, 7)], dim=1)
z_hat = (torch.exp(similarities / tau).mean() * bank).item()
x = torch.exp(similarities / tau) / z_hat
ln_pmt = torch.log(x[:, 0] / (x[:, 0] + k_noise * pn))
ln_pon = torch.log(k_noise * pn / (x[:, 1:] + k_noise * pn))
results["nceNormaliser"] = z_hat
results["nce"] = (-(ln_pmt.sum() + ln_pon.sum()) / 3).item()

# Jensen-Shannon MI, DIM's code (get_positive/negative_expectation, measure "JSD"), minus its
# 2 log 2 shift.
p, n_ = reference_input(2, 3, 8, 3.0), reference_input(1, 7, 9, 3.0)
e_pos = (math.log(2.0) - F.softplus(-p)).mean()
e_neg = (F.softplus(-n_) + n_ - math.log(2.0)).mean()
results["jensenShannon"] = (e_pos - e_neg - 2 * math.log(2.0)).item()

# GAN losses: hinge (BigGAN's code) and non-saturating as binary cross-entropy with logits.
real, fake = reference_input(3, 4, 10, 2.0), reference_input(3, 3, 11, 2.0)
results["hingeDiscriminator"] = (F.relu(1 - real[0]).mean() + F.relu(1 + fake[0]).mean()).item()
results["hingeGenerator"] = (-fake[0].mean()).item()
results["nonSaturatingDiscriminator"] = (F.binary_cross_entropy_with_logits(real[0], torch.ones(4))
                                         + F.binary_cross_entropy_with_logits(fake[0], torch.zeros(3))).item()
results["nonSaturatingGenerator"] = F.binary_cross_entropy_with_logits(fake[0], torch.ones(3)).item()
# BigBiGAN (Donahue & Simonyan 2019), rows 0, 1, 2 = s_x, s_z, s_xz.
results["bigBiGanDiscriminator"] = (sum(F.relu(1 - real[r]) for r in range(3)).mean()
                                    + sum(F.relu(1 + fake[r]) for r in range(3)).mean()).item()
results["bigBiGanEncoderGenerator"] = (real.sum(0).mean() - fake.sum(0).mean()).item()

# Entropy of softmax(logits).
results["entropy"] = torch.distributions.Categorical(logits=reference_input(3, 5, 12, 3.0)).entropy().mean().item()

# MixMatch (the authors' code: sharpen p^(1/T) / sum; label guess from K softmaxes; L_U = mse).
probabilities = F.softmax(reference_input(3, 4, 13), dim=1)
sharpened = probabilities ** 2 / (probabilities ** 2).sum(1, keepdim=True)
results["sharpen"] = sharpened.flatten().tolist()
guess = F.softmax(reference_input(6, 4, 14).reshape(2, 3, 4), dim=2).mean(0)
guess = guess ** 2 / (guess ** 2).sum(1, keepdim=True)
results["guessLabels"] = guess.flatten().tolist()
logits, targets = reference_input(3, 4, 15, 2.0), F.softmax(reference_input(3, 4, 16), dim=1)
results["softCrossEntropy"] = (-(targets * F.log_softmax(logits, dim=1)).sum(1)).mean().item()
results["consistencyL2"] = F.mse_loss(F.softmax(logits, dim=1), targets).item()

# Batch-hard soft-margin triplet (Hermans et al. 2017 code): cdist, masks, softplus.
embeddings, labels = reference_input(6, 3, 17), torch.tensor([0, 0, 1, 1, 2, 2])
d = torch.cdist(embeddings, embeddings)
same = labels[:, None] == labels[None, :]
hardest_positive = (d * same).max(1).values
hardest_negative = (d + 1e5 * same).min(1).values
results["batchHardSoftMargin"] = F.softplus(hardest_positive - hardest_negative).mean().item()

# EnAET's KL(p_original || p_transformed) via kl_div(log q, p), and AET's MSE.
original, transformed = reference_input(3, 4, 18, 2.0), reference_input(3, 4, 19, 2.0)
results["klDivergence"] = F.kl_div(F.log_softmax(transformed, dim=1), F.softmax(original, dim=1),
                                   reduction="batchmean").item()
results["parameterRegression"] = F.mse_loss(reference_input(3, 8, 20), reference_input(3, 8, 21)).item()

print(f"// PyTorch {torch.__version__}, float64; generated by tests/Core/reference/losses_reference.py")
for name, value in results.items():
    if isinstance(value, list):
        print(f'    "{name}", [| {"; ".join(repr(v) for v in value)} |]')
    else:
        print(f'    "{name}", [| {value!r} |]')
