namespace Ssl.Host.Distributed;

/// <summary>
/// The process's place in its run: the world of one unless a launcher started it as one of several
/// ranks (<c>mpirun</c>/<c>ssl train --ranks N</c>: OMPI_COMM_WORLD_SIZE; Slurm's <c>srun</c>:
/// SLURM_STEP_NUM_TASKS), in which case the first use joins that world through MPI. Rank 0 is the
/// one writer of the run folder (docs/distributed.md).
/// </summary>
public static class World
{
    static ICollectives? current;
    static readonly object gate = new();

    /// <summary>The ranks this process's launcher started (1 without one).</summary>
    public static int LaunchedSize => Variable("OMPI_COMM_WORLD_SIZE") ?? Variable("PMIX_SIZE") ?? Variable("SLURM_STEP_NUM_TASKS") ?? 1;

    /// <summary>The ranks of this run on this machine (to share its cores): the launcher's figure, else all.</summary>
    public static int LocalSize =>
        Variable("OMPI_COMM_WORLD_LOCAL_SIZE") ?? SlurmTasksHere() ?? LaunchedSize;

    /// <summary>This process's world, joined on first use.</summary>
    public static ICollectives Current
    {
        get
        {
            lock (gate) return current ??= Join();
        }
    }

    /// <summary>
    /// Until disposed, <see cref="Current"/> is the world of one: what rank 0 runs alone after the
    /// run's training (baselines, fine-tuning, probes) may train with the engine without waiting on
    /// ranks that no longer take part. Its torch threads take the cores the other ranks of this
    /// machine leave (at most every core), and are set back on disposal.
    /// </summary>
    public static IDisposable Alone()
    {
        ICollectives? joined;
        lock (gate)
        {
            joined = current;
            current = SingleProcess.Instance;
        }
        var threads = TorchSharp.torch.get_num_threads();
        var local = joined is { Size: > 1 } ? LocalSize : 1;
        TorchSharp.torch.set_num_threads(Math.Min(Environment.ProcessorCount, threads * local));
        return new Restore(() =>
        {
            TorchSharp.torch.set_num_threads(threads);
            lock (gate) current = joined;
        });
    }

    sealed class Restore(Action restore) : IDisposable
    {
        public void Dispose() => restore();
    }

    static ICollectives Join()
    {
        if (LaunchedSize == 1) return SingleProcess.Instance;
        if (Environment.GetEnvironmentVariable("OMPI_COMM_WORLD_SIZE") is null && Environment.GetEnvironmentVariable("PMIX_RANK") is null)
            throw new RanksException(
                $"ranks: expected a launcher that wires its {LaunchedSize} processes together (mpirun, or srun with PMIx), found srun without it; " +
                "run `srun --mpi=pmix` (or set MpiDefault=pmix in slurm.conf)");
        var mpi = new MpiCollectives();
        if (mpi.Size != LaunchedSize)
        {
            // srun without PMIx: every task its own world of one, all writing one folder.
            var size = mpi.Size;
            mpi.Dispose();
            throw new RanksException(
                $"ranks: expected the {LaunchedSize} processes the launcher started in one MPI world, found a world of {size}; " +
                "under Slurm run `srun --mpi=pmix` (or set MpiDefault=pmix in slurm.conf)");
        }
        // CUDA tensors through NCCL where CUDA and NCCL are; else MPI copies them through the CPU.
        return TorchSharp.torch.cuda.is_available() && NcclCollectives.Available ? new NcclCollectives.Routed(mpi) : mpi;
    }

    /// <summary>Whether this process writes the run folder, the console and the results: rank 0.</summary>
    public static bool IsWriter => current is null ? RankFromLauncher == 0 : current.Rank == 0;

    /// <summary>This process's rank as its launcher says (0 without one), readable before joining.</summary>
    public static int RankFromLauncher => Variable("OMPI_COMM_WORLD_RANK") ?? Variable("PMIX_RANK") ?? Variable("SLURM_PROCID") ?? 0;

    /// <summary>Leaves the world (MPI_Finalize) at the end of the process.</summary>
    public static void Leave()
    {
        lock (gate)
        {
            current?.Dispose();
            current = null;
        }
    }

    /// <summary>Ends every rank of a joined world of several with <paramref name="code"/> (MPI_Abort); nothing in a world of one.</summary>
    public static void Abort(int code)
    {
        ICollectives? joined;
        lock (gate) joined = current;
        if (joined is NcclCollectives.Routed routed) joined = routed.Launch;
        if (joined is MpiCollectives mpi && mpi.Size > 1)
        {
            Console.Error.Flush();
            mpi.Abort(code);
        }
    }

    static int? Variable(string name) => int.TryParse(Environment.GetEnvironmentVariable(name), out var value) ? value : null;

    /// <summary>Slurm's tasks of this step on this node: the first figure of SLURM_STEP_TASKS_PER_NODE ("2(x3),1").</summary>
    static int? SlurmTasksHere()
    {
        var text = Environment.GetEnvironmentVariable("SLURM_STEP_TASKS_PER_NODE");
        if (string.IsNullOrEmpty(text)) return null;
        var digits = new string(text.TakeWhile(char.IsDigit).ToArray());
        return int.TryParse(digits, out var n) && n > 0 ? n : null;
    }
}
