namespace Ssl.Host.Data;

/// <summary>Deterministic seed derivation (SplitMix64), stable across processes and .NET versions.</summary>
public static class Seeds
{
    /// <summary>A 31-bit seed for <see cref="Random"/> derived from a run seed and a stream number.</summary>
    public static int Derive(long seed, long stream)
    {
        var z = unchecked((ulong)seed + 0x9E3779B97F4A7C15UL * (ulong)(stream + 1));
        z = unchecked((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL);
        z = unchecked((z ^ (z >> 27)) * 0x94D049BB133111EBUL);
        z ^= z >> 31;
        return (int)(z & 0x7FFFFFFF);
    }
}
