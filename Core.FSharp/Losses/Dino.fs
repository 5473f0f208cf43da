/// DINO: self-distillation with no labels (Caron et al. 2021, "Emerging Properties in
/// Self-Supervised Vision Transformers", Sec. 3.1, eq. 1-4, Algorithm 1; the authors' DINOLoss in
/// main_dino.py). A student g_s is trained to match the output distribution of a momentum teacher
/// g_t over K dimensions across views: the teacher sees only the global crops, the student every
/// crop. Collapse is avoided by centering (the teacher's logits minus a running mean c) and
/// sharpening (a low teacher temperature). Logits are (rows, K); a batch of N images with V crops
/// is V·N rows, crop-major (rows v·N .. v·N + N − 1 are crop v), the global crops first.
module Ssl.Core.Losses.Dino

open TorchSharp
open type TorchSharp.torch
open type TorchSharp.torch.nn.functional
// Last, so F#'s float wins over torch's dtype field.
open Microsoft.FSharp.Core.Operators
open Ssl.Core.Shape

/// The teacher's targets P_t = softmax((g_t − c) / τ_t) (eq. 1 with Sec. 3.1's centering), detached
/// (the stop-gradient of Algorithm 1). teacher: (R, K); center: (K) or (1, K) → (R, K).
let teacherProbabilities (teacherTemperature: float) (center: Tensor) (teacher: Tensor) : Tensor =
    Checks.positive "teacherTemperature" teacherTemperature
    expect "teacher" [| Any; Any |] teacher
    if center.numel () <> teacher.shape[1] then
        invalidArg "center" $"center: expected {teacher.shape[1]} values (the teacher's K), found shape {show center.shape}"
    use scope = NewDisposeScope()
    let centred = teacher.detach() - center.detach().reshape(1L, -1L)
    softmax(centred / teacherTemperature, 1L).MoveToOuterDisposeScope()

/// DINO's loss (eq. 3, Algorithm 1, main_dino.py's DINOLoss.forward): the mean over pairs (teacher
/// crop i, student crop v), v ≠ i, of H(P_t^i, P_s^v) = −Σ_k P_t^i log P_s^v, averaged over the
/// batch, where P_s = softmax(g_s / τ_s) and P_t = `teacherProbabilities`. With G global and V
/// crops there are G·(V − 1) pairs. `crops`: V ≥ 2; student: (V·N, K); teacher: (G·N, K), 1 ≤ G ≤ V;
/// center: (K). No gradient reaches `teacher` or `center`.
let loss (studentTemperature: float) (teacherTemperature: float) (crops: int) (center: Tensor) (teacher: Tensor) (student: Tensor) : Tensor =
    Checks.positive "studentTemperature" studentTemperature
    if crops < 2 then invalidArg "crops" $"crops: expected at least 2 crops per image (pairs of different views), found {crops}"
    expect "student" [| Any; Any |] student
    Checks.nonEmpty "student" student
    if student.shape[0] % int64 crops <> 0L then
        invalidArg "student" $"student: expected a multiple of crops = {crops} rows, found {show student.shape}"
    let n, k = student.shape[0] / int64 crops, student.shape[1]
    expect "teacher" [| Any; Exactly k |] teacher
    let globalCrops = teacher.shape[0] / n
    if teacher.shape[0] % n <> 0L || globalCrops < 1L || globalCrops > int64 crops then
        invalidArg "teacher"
            $"teacher: expected G·{n} rows (G global crops of the student's {n} images, 1 <= G <= {crops}), found {show teacher.shape}"
    use scope = NewDisposeScope()
    let targets = (teacherProbabilities teacherTemperature center teacher).reshape(globalCrops, n * k)
    let logStudent = log_softmax(student / studentTemperature, 1L).reshape(int64 crops, n * k)
    // cross[i, v] = Σ_rows Σ_k P_t^i log P_s^v: one (G, V) matrix of every pair at once.
    let cross = targets.matmul(logStudent.t())
    let differentViews = ones(globalCrops, int64 crops, dtype = ScalarType.Bool, device = student.device).logical_xor(eye(globalCrops, int64 crops, dtype = ScalarType.Bool, device = student.device))
    let pairs = float (globalCrops * (int64 crops - 1L))
    (-(cross.masked_select(differentViews).sum()) / (float n * pairs)).MoveToOuterDisposeScope()

/// The center update (Sec. 3.1, eq. 4; update_center in main_dino.py): c ← m·c + (1 − m)·mean over
/// the rows of the teacher's logits (every global crop of the batch), without gradient. `momentum`:
/// m in [0, 1] (the paper: 0.9); center: (K); teacher: (R, K) → the new center (K).
let updatedCenter (momentum: float) (center: Tensor) (teacher: Tensor) : Tensor =
    if not (momentum >= 0.0 && momentum <= 1.0) then invalidArg "momentum" $"momentum: expected a value in [0, 1], found {momentum}"
    expect "teacher" [| Any; Exactly (center.numel ()) |] teacher
    Checks.nonEmpty "teacher" teacher
    use scope = NewDisposeScope()
    use _ = no_grad ()
    (center.detach().reshape(-1L) * momentum + teacher.detach().mean([| 0L |]) * (1.0 - momentum)).MoveToOuterDisposeScope()

/// The teacher temperature at `epoch` (0-based; main_dino.py's teacher_temp_schedule, Sec. 3.1 and
/// App. D): np.linspace(warmup, final, warmupEpochs)[epoch] during the first `warmupEpochs` epochs,
/// then `final` (the paper: 0.04 to 0.07 over 30 epochs).
let teacherTemperature (warmup: float) (final: float) (warmupEpochs: int) (epoch: int) : float =
    Checks.positive "warmup" warmup
    Checks.positive "final" final
    if warmupEpochs < 0 then invalidArg "warmupEpochs" $"warmupEpochs: expected a count >= 0, found {warmupEpochs}"
    if epoch < 0 then invalidArg "epoch" $"epoch: expected an epoch >= 0, found {epoch}"
    if epoch >= warmupEpochs then final
    elif warmupEpochs = 1 then warmup
    else warmup + (final - warmup) * float epoch / float (warmupEpochs - 1)

/// The mean entropy −Σ_k p_k log p_k of the rows of probabilities (R, K) (0 log 0 = 0), in nats: the
/// sharpness the paper follows in Fig. 7 (log K for a uniform teacher, 0 for a one-hot one).
let entropy (probabilities: Tensor) : float =
    expect "probabilities" [| Any; Any |] probabilities
    Checks.nonEmpty "probabilities" probabilities
    use scope = NewDisposeScope()
    use _ = no_grad ()
    let p = probabilities.detach().to_type(ScalarType.Float64)
    let terms = where(p.gt(Scalar.op_Implicit 0.0), -(p * p.clamp_min(1e-300).log()), zeros_like(p))
    terms.sum(1L).mean().item<float>()
