/// BigBiGAN (Donahue & Simonyan 2019) at small scale for 28–32 px images: a generator G, an
/// encoder E and a joint discriminator D with unary and joint scores.
namespace Ssl.Core.Models

open TorchSharp
open type TorchSharp.torch
open Ssl.Core.Shape

module internal BigBiGanChecks =
    let imageSize (size: int64) =
        if size < 8L || size % 4L <> 0L then
            invalidArg "imageSize" $"imageSize: expected a multiple of 4 that is at least 8 (28 or 32 here), found {size}"

/// The generator G (Donahue & Simonyan 2019, Sec. 2; a small DCGAN-style stand-in for BigGAN):
/// Linear z → (2w, s/4, s/4) → BN → ReLU → two 4x4 stride-2 transposed convolutions (2w → w → w/2,
/// each BN → ReLU) → 3x3 convolution to `channels` → tanh. Unlike BigGAN's G it has no spectral
/// normalisation: of the paper's spectral norms only D's are kept at this scale.
/// z: (N, latentDim) from the Gaussian prior → images (N, channels, s, s) in [-1, 1].
type BigBiGanGenerator(channels: int64, imageSize: int64, latentDim: int64, width: int64, ?layout: SafeConv.ConvLayout) as this =
    inherit nn.Module<Tensor, Tensor>("BigBiGanGenerator")
    let layout = defaultArg layout SafeConv.ChannelsLast
    do
        Layers.checkPositive "latentDim" latentDim
        Layers.checkPositive "channels" channels
        BigBiGanChecks.imageSize imageSize
        if width < 2L || width % 2L <> 0L then invalidArg "width" $"width: expected an even number >= 2, found {width}"
    let side = imageSize / 4L
    let project = nn.Linear(latentDim, 2L * width * side * side)
    let upsample =
        Layers.sequential [
            "bn0", nn.BatchNorm2d(2L * width) :> nn.Module<Tensor, Tensor>
            "relu0", nn.ReLU()
            "up1", nn.ConvTranspose2d(2L * width, width, 4L, stride = 2L, padding = 1L)
            "bn1", nn.BatchNorm2d(width)
            "relu1", nn.ReLU()
            "up2", nn.ConvTranspose2d(width, width / 2L, 4L, stride = 2L, padding = 1L)
            "bn2", nn.BatchNorm2d(width / 2L)
            "relu2", nn.ReLU()
            "out", new SafeConv.SafeConv2d(width / 2L, channels, 3L, 1L, 1L, true, layout)
            "tanh", nn.Tanh() ]
    do this.RegisterComponents()

    override _.forward(z) =
        expect "z" [| Any; Exactly latentDim |] z
        use scope = torch.NewDisposeScope()
        let grid = project.call(z).reshape(z.shape[0], 2L * width, side, side)
        upsample.call(grid).MoveToOuterDisposeScope()

/// The encoder E (Donahue & Simonyan 2019, Sec. 2; small conv net instead of their RevNet): a
/// Gaussian encoder. Three conv-BN-ReLU layers (4x4 stride 2 to w/2, 4x4 stride 2 to w, 3x3 to 2w),
/// global average pool, Linear → 2·latentDim giving the mean μ and ρ; σ = softplus(ρ) + 1e-4 (this
/// implementation's parameterisation of the paper's Gaussian encoder).
/// `forward` returns the deterministic μ (the representation used downstream); `Sample` draws
/// z = μ + σ·ε with ε ~ N(0, I) from an explicit generator (the reparameterisation trick, so
/// gradients reach E through z). images: (N, channels, s, s).
type BigBiGanEncoder(channels: int64, latentDim: int64, width: int64, ?layout: SafeConv.ConvLayout) as this =
    inherit Encoder("BigBiGanEncoder")
    let layout = defaultArg layout SafeConv.ChannelsLast
    do
        Layers.checkPositive "channels" channels
        Layers.checkPositive "latentDim" latentDim
        if width < 2L || width % 2L <> 0L then invalidArg "width" $"width: expected an even number >= 2, found {width}"
    let features =
        Layers.sequential [
            "conv1", SafeConv.layer layout channels (width / 2L) 4L 2L 1L false
            "bn1", nn.BatchNorm2d(width / 2L)
            "relu1", nn.ReLU()
            "conv2", SafeConv.layer layout (width / 2L) width 4L 2L 1L false
            "bn2", nn.BatchNorm2d(width)
            "relu2", nn.ReLU()
            "conv3", Layers.conv3x3 layout width (2L * width) 1L
            "bn3", nn.BatchNorm2d(2L * width)
            "relu3", nn.ReLU()
            "pool", nn.AdaptiveAvgPool2d(1L)
            "flatten", nn.Flatten() ]
    let gaussian = nn.Linear(2L * width, 2L * latentDim)
    let minimumStd = 1e-4
    do this.RegisterComponents()

    override _.FeatureDim = latentDim

    /// Length of the average-pooled trunk features `Pooled` returns: 2·width.
    member _.PooledDim = 2L * width

    /// The trunk's globally average-pooled features before the Gaussian layer (the paper's
    /// "avepool" features, on which its linear classifiers are trained, Donahue & Simonyan 2019, Sec. 3 and Table 2):
    /// images (N, channels, s, s) → (N, 2·width).
    member _.Pooled(images: Tensor) =
        expect "images" [| Any; Exactly channels; Any; Any |] images
        use scope = torch.NewDisposeScope()
        features.call(images).MoveToOuterDisposeScope()

    /// images: (N, channels, s, s) → struct (μ: (N, latentDim), σ: (N, latentDim) > 0).
    member _.MeanAndStd(images: Tensor) =
        expect "images" [| Any; Exactly channels; Any; Any |] images
        use scope = torch.NewDisposeScope()
        let parameters = gaussian.call(features.call images)
        let mean = parameters.narrow(1L, 0L, latentDim)
        let std = nn.functional.softplus(parameters.narrow(1L, latentDim, latentDim)) + minimumStd
        struct (mean.MoveToOuterDisposeScope(), std.MoveToOuterDisposeScope())

    /// z = μ + σ·ε, ε drawn from `generator` (on the images' device): images (N, channels, s, s) →
    /// z (N, latentDim), differentiable in E's parameters.
    member this.Sample(images: Tensor, generator: torch.Generator) =
        use scope = torch.NewDisposeScope()
        let struct (mean, std) = this.MeanAndStd images
        let noise = Ssl.Core.Transforms.Draw.rows generator 0L mean.shape[0] (fun n ->
            torch.randn([| n; mean.shape[1] |], dtype = mean.dtype, device = mean.device, generator = generator))
        (mean + std * noise).MoveToOuterDisposeScope()

    /// images: (N, channels, s, s) → μ (N, latentDim).
    override this.forward(images) =
        use scope = torch.NewDisposeScope()
        let struct (mean, _) = this.MeanAndStd images
        mean.MoveToOuterDisposeScope()

/// The three discriminator scores of BigBiGAN (Donahue & Simonyan 2019, Sec. 2), each (N).
[<Struct>]
type BiGanScores =
    { /// s_x = θ_xᵀ F(x): the unary score of the image.
      Sx: Tensor
      /// s_z = θ_zᵀ H(z): the unary score of the latent.
      Sz: Tensor
      /// s_xz = θ_xzᵀ J(F(x), H(z)): the joint score.
      Sxz: Tensor }

/// The joint discriminator D of BigBiGAN (Donahue & Simonyan 2019, Sec. 2), every layer
/// spectrally normalised as in BigGAN's D (Miyato et al. 2018): F(x) conv net (3x3 to w, 4x4
/// stride 2 to w, 4x4 stride 2 to 2w, each ReLU, global average pool → 2w); H(z) MLP (latentDim →
/// 2w → 2w, ReLU); J([F, H]) MLP (4w → 4w → 4w, ReLU); linear scores s_x on F, s_z on H, s_xz on J.
type BigBiGanDiscriminator(channels: int64, latentDim: int64, width: int64, ?layout: SafeConv.ConvLayout) as this =
    inherit nn.Module("BigBiGanDiscriminator")
    do
        Layers.checkPositive "channels" channels
        Layers.checkPositive "latentDim" latentDim
        Layers.checkPositive "width" width
    let relu () = nn.ReLU() :> nn.Module<Tensor, Tensor>
    let imageFeatures =
        Layers.sequential [
            "conv1", new SpectralNormConv2d(channels, width, 3L, 1L, 1L, ?layout = layout) :> nn.Module<Tensor, Tensor>
            "relu1", relu ()
            "conv2", new SpectralNormConv2d(width, width, 4L, 2L, 1L, ?layout = layout)
            "relu2", relu ()
            "conv3", new SpectralNormConv2d(width, 2L * width, 4L, 2L, 1L, ?layout = layout)
            "relu3", relu ()
            "pool", nn.AdaptiveAvgPool2d(1L)
            "flatten", nn.Flatten() ]
    let latentFeatures =
        Layers.sequential [
            "fc1", new SpectralNormLinear(latentDim, 2L * width) :> nn.Module<Tensor, Tensor>
            "relu1", relu ()
            "fc2", new SpectralNormLinear(2L * width, 2L * width)
            "relu2", relu () ]
    let jointFeatures =
        Layers.sequential [
            "fc1", new SpectralNormLinear(4L * width, 4L * width) :> nn.Module<Tensor, Tensor>
            "relu1", relu ()
            "fc2", new SpectralNormLinear(4L * width, 4L * width)
            "relu2", relu () ]
    let imageScore = new SpectralNormLinear(2L * width, 1L)
    let latentScore = new SpectralNormLinear(2L * width, 1L)
    let jointScore = new SpectralNormLinear(4L * width, 1L)
    do this.RegisterComponents()

    /// images: (N, channels, s, s); z: (N, latentDim) → the three scores, each (N).
    member _.Scores(images: Tensor, z: Tensor) =
        expect "images" [| Any; Exactly channels; Any; Any |] images
        expect "z" [| Exactly images.shape[0]; Exactly latentDim |] z
        use scope = torch.NewDisposeScope()
        let f = imageFeatures.call images
        let h = latentFeatures.call z
        let j = jointFeatures.call (torch.cat([| f; h |], 1L))
        { Sx = imageScore.call(f).squeeze(1L).MoveToOuterDisposeScope()
          Sz = latentScore.call(h).squeeze(1L).MoveToOuterDisposeScope()
          Sxz = jointScore.call(j).squeeze(1L).MoveToOuterDisposeScope() }

/// The three BigBiGAN networks for images of `channels` x `imageSize` x `imageSize` (28 or 32),
/// latent dimension `latentDim` and base width `width` (even). Sub-modules "generator", "encoder",
/// "discriminator".
type BigBiGan(channels: int64, imageSize: int64, latentDim: int64, width: int64, ?layout: SafeConv.ConvLayout) as this =
    inherit nn.Module("BigBiGan")
    let generator = new BigBiGanGenerator(channels, imageSize, latentDim, width, ?layout = layout)
    let encoder = new BigBiGanEncoder(channels, latentDim, width, ?layout = layout)
    let discriminator = new BigBiGanDiscriminator(channels, latentDim, width, ?layout = layout)
    do this.RegisterComponents()

    member _.Generator = generator
    member _.Encoder = encoder
    member _.Discriminator = discriminator
    member _.LatentDim = latentDim

    /// n draws from the prior N(0, I) → (n, latentDim), from `generator` on its device.
    member _.SamplePrior(n: int64, random: torch.Generator) =
        Layers.checkPositive "n" n
        Ssl.Core.Transforms.Draw.rows random 0L n (fun rows -> torch.randn([| rows; latentDim |], device = random.device, generator = random))
