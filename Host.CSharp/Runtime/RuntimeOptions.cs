using System.Text.Json.Nodes;

namespace Ssl.Host.Runtime;

/// <summary>Which statistics batch norm normalises with on several ranks (docs/distributed.md): the paper's
/// choice (the recipe's trait), each rank's own batch, or the global batch (synchronised).</summary>
public enum BatchNormMode { Paper, PerRank, Synchronised }

/// <summary>The memory layout CPU convolutions run in (docs/performance.md, "Step by step").</summary>
public enum MemoryFormat { ChannelsLast, Nchw }

/// <summary>
/// How a run computes, apart from what it computes: the options that can change results in the last
/// bits (or speed) without changing the experiment. Set by command-line flags; the environment
/// variables <see cref="MemoryFormatVariable"/> and <see cref="SideThreadVariable"/> only give their
/// defaults. Every run records them in config.json's <c>runtime</c> and a resume asks for the same.
/// </summary>
public sealed record RuntimeOptions
{
    /// <summary>Default of <c>--memory-format</c>: <c>channels-last</c> (unset) or <c>nchw</c>.</summary>
    public const string MemoryFormatVariable = "SSL_MEMORY_FORMAT";
    /// <summary>Default of <c>--side-thread</c>: <c>on</c> (unset) or <c>off</c>.</summary>
    public const string SideThreadVariable = "SSL_SIDE_THREAD";

    public MemoryFormat MemoryFormat { get; init; } = MemoryFormat.ChannelsLast;
    /// <summary>Whether a step may run two passes side by side (<see cref="Engine.SideThread"/>).</summary>
    public bool SideThread { get; init; } = true;
    /// <summary>Torch intra-op threads; 0 = every core.</summary>
    public int Threads { get; init; }
    /// <summary>The arithmetic of training: float32 (the one this build trains in).</summary>
    public string Precision { get; init; } = "float32";
    /// <summary>Batch norm on several ranks (<c>--batch-norm</c>); nothing changes at one rank.</summary>
    public BatchNormMode BatchNorm { get; init; } = BatchNormMode.Paper;
    /// <summary>Processes (ranks) one run spans: its launcher's (<see cref="Distributed.World.LaunchedSize"/>), 1 without one.</summary>
    public int Ranks { get; init; } = 1;

    /// <summary>These options with <paramref name="mode"/> as <see cref="BatchNorm"/>.</summary>
    public RuntimeOptions WithBatchNorm(BatchNormMode mode) => this with { BatchNorm = mode };

    /// <summary>The options with the documented defaults of this process's environment.</summary>
    public static RuntimeOptions FromEnvironment() => new()
    {
        MemoryFormat = ParseMemoryFormat(Environment.GetEnvironmentVariable(MemoryFormatVariable), MemoryFormatVariable),
        SideThread = ParseSwitch(Environment.GetEnvironmentVariable(SideThreadVariable), SideThreadVariable),
    };

    /// <summary><c>channels-last</c> (also empty) or <c>nchw</c>; <paramref name="source"/> names the flag or variable in the error.</summary>
    public static MemoryFormat ParseMemoryFormat(string? text, string source) => text?.Trim().ToLowerInvariant() switch
    {
        null or "" or "channels-last" or "channels_last" or "nhwc" => MemoryFormat.ChannelsLast,
        "nchw" or "contiguous" => MemoryFormat.Nchw,
        var other => throw new ArgumentException($"{source}: expected channels-last or nchw, found '{other}'"),
    };

    /// <summary><c>on</c> (also empty) or <c>off</c>.</summary>
    public static bool ParseSwitch(string? text, string source) => text?.Trim().ToLowerInvariant() switch
    {
        null or "" or "on" => true,
        "off" => false,
        var other => throw new ArgumentException($"{source}: expected on or off, found '{other}'"),
    };

    /// <summary><c>paper</c> (also empty), <c>rank</c> or <c>sync</c>; <paramref name="source"/> names the flag in the error.</summary>
    public static BatchNormMode ParseBatchNorm(string? text, string source) => text?.Trim().ToLowerInvariant() switch
    {
        null or "" or "paper" => BatchNormMode.Paper,
        "rank" or "per-rank" => BatchNormMode.PerRank,
        "sync" or "synchronised" or "synchronized" => BatchNormMode.Synchronised,
        var other => throw new ArgumentException($"{source}: expected paper, rank or sync, found '{other}'"),
    };

    public static string Name(BatchNormMode mode) => mode switch
    {
        BatchNormMode.PerRank => "rank",
        BatchNormMode.Synchronised => "sync",
        _ => "paper",
    };

    /// <summary>The layout the run's models are built with (Core's convolutions read their input in it).</summary>
    public Ssl.Core.Models.SafeConv.ConvLayout ConvLayout =>
        MemoryFormat == MemoryFormat.ChannelsLast ? Ssl.Core.Models.SafeConv.ConvLayout.ChannelsLast : Ssl.Core.Models.SafeConv.ConvLayout.Nchw;

    public static string Name(MemoryFormat format) => format == MemoryFormat.ChannelsLast ? "channels-last" : "nchw";

    /// <summary>config.json's <c>runtime</c> object (<paramref name="threads"/>: the resolved count).</summary>
    public JsonObject ToJson(int threads) => new()
    {
        ["memory_format"] = Name(MemoryFormat),
        ["side_thread"] = SideThread,
        ["threads"] = threads,
        ["precision"] = Precision,
        ["ranks"] = Ranks,
        ["batch_norm"] = Name(BatchNorm),
    };
}
