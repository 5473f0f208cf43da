using ScottPlot;

namespace Ssl.Host.Reporting;

/// <summary>
/// Qualitative colours for classes and series, told apart at a glance on white: Tableau 10 (D3's
/// category10) for up to ten, then ten of Kelly's 22 colours of maximum contrast (Kelly 1965,
/// "Twenty-two colors of maximum contrast"), each the one farthest (CIELAB ΔE) from those before,
/// so any two of the first twenty are at least ΔE 20 apart. Past twenty, hues step by the golden
/// angle at three lightnesses: all different, no longer all far apart (the legend tells them).
/// </summary>
public static class ClassPalette
{
    static readonly string[] Distinct =
    {
        "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
        "#222222", "#f99379", "#c2b280", "#008856", "#a1caf1", "#b3446c", "#882d17", "#f6a600", "#e68fac", "#2b3d26",
    };

    /// <summary>How many colours are pairwise far apart (ΔE ≥ 20).</summary>
    public static int DistinctCount => Distinct.Length;

    /// <summary>The colour of class (or series) <paramref name="index"/> ≥ 0.</summary>
    public static Color Of(int index)
    {
        if (index < 0) throw new ArgumentOutOfRangeException(nameof(index), index, "index: expected a class index >= 0");
        if (index < Distinct.Length) return Color.FromHex(Distinct[index]);
        var k = index - Distinct.Length;
        var hue = (k * 137.508) % 360.0 / 360.0;
        var lightness = new[] { 0.45, 0.30, 0.62 }[k % 3];
        return Color.FromHSL((float)hue, 0.75f, (float)lightness);
    }
}
