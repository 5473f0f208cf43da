"""The PyTorch twin of `ssl bench`'s training steps (see scripts/peer/peer.py).

Each module mirrors one part of Ssl, op for op, so that the twin's step is the same work as ours:
  sampling  Host.CSharp/Data/Seeds.cs, BatchSampler.cs (and .NET's seeded System.Random)
  engine    Host.CSharp/Engine/OptimizerSpec.cs, TrainingStep.cs, Trainer.cs, StepBenchmark.cs
  data      Host.CSharp/Data/Idx.cs, ImageDataset.ChannelStatistics, Eval/Features.ToInput
  models    Core.FSharp/Models/SafeConv.fs, Encoders.fs (SmallConvNet), Heads.fs, Momentum.fs, Memory.fs
  transforms Core.FSharp/Transforms/Draw.fs, Geometric.fs, Photometric.fs; Experiments/Views.fs
  recipes   Experiments/SupervisedTraining.fs, Recipes/RotNet.fs, Recipes/MoCo.fs, Losses/Contrastive.fs
"""
