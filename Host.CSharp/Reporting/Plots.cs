using ScottPlot;
using static TorchSharp.torch;

namespace Ssl.Host.Reporting;

/// <summary>PNG figures of a run (ScottPlot): curves over training, 2-D feature maps, method-vs-baseline bars.</summary>
public static class Plots
{
    /// <summary>One line per series over a shared x axis (e.g. loss against step); NaN points are skipped.</summary>
    public static void Curves(string path, string title, string xLabel, string yLabel,
                              IReadOnlyDictionary<string, (double[] X, double[] Y)> series)
    {
        var plot = new Plot();
        foreach (var (name, (xs, ys)) in series)
        {
            var keep = Enumerable.Range(0, Math.Min(xs.Length, ys.Length)).Where(i => double.IsFinite(ys[i])).ToArray();
            if (keep.Length == 0) continue;
            var line = plot.Add.Scatter(keep.Select(i => xs[i]).ToArray(), keep.Select(i => ys[i]).ToArray());
            line.LegendText = name;
            line.MarkerSize = keep.Length > 60 ? 0 : 4;
        }
        plot.Title(title);
        plot.XLabel(xLabel);
        plot.YLabel(yLabel);
        if (series.Count > 1) plot.ShowLegend();
        Save(plot, path, 900, 520);
    }

    /// <summary>A 2-D scatter of points coloured by class, with a legend of class names.</summary>
    /// <param name="points">(N, 2)</param>
    /// <param name="labels">int64 (N)</param>
    public static void ClassMap(string path, string title, Tensor points, Tensor labels, IReadOnlyList<string> classNames)
    {
        Ssl.Core.Shape.expect("points", new[] { Ssl.Core.Shape.Dim.Any, Ssl.Core.Shape.Dim.NewExactly(2) }, points);
        var xy = points.cpu().to_type(ScalarType.Float64).data<double>().ToArray();
        var ls = labels.cpu().data<long>().ToArray();
        var palette = new ScottPlot.Palettes.Category10();
        var plot = new Plot();
        for (var c = 0; c < classNames.Count; c++)
        {
            var idx = Enumerable.Range(0, ls.Length).Where(i => ls[i] == c).ToArray();
            if (idx.Length == 0) continue;
            var dots = plot.Add.ScatterPoints(idx.Select(i => xy[2 * i]).ToArray(), idx.Select(i => xy[2 * i + 1]).ToArray());
            dots.Color = palette.GetColor(c);
            dots.MarkerSize = 3;
            dots.LegendText = classNames[c];
        }
        plot.Title(title);
        plot.ShowLegend(Edge.Right);
        Save(plot, path, 900, 700);
    }

    /// <summary>Grouped bars: for each group (e.g. protocol), one bar per series (e.g. method, baselines).</summary>
    public static void Bars(string path, string title, string yLabel, IReadOnlyList<string> groups,
                            IReadOnlyDictionary<string, double?[]> series)
    {
        var plot = new Plot();
        var palette = new ScottPlot.Palettes.Category10();
        var names = series.Keys.ToArray();
        var width = 0.8 / Math.Max(names.Length, 1);
        for (var s = 0; s < names.Length; s++)
        {
            var values = series[names[s]];
            var bars = new List<Bar>();
            for (var g = 0; g < groups.Count; g++)
                if (values[g] is { } v)
                    bars.Add(new Bar { Position = g + (s - (names.Length - 1) / 2.0) * width, Value = v, Size = width * 0.95, FillColor = palette.GetColor(s) });
            var plotted = plot.Add.Bars(bars);
            plotted.LegendText = names[s];
        }
        plot.Axes.Bottom.TickGenerator = new ScottPlot.TickGenerators.NumericManual(
            Enumerable.Range(0, groups.Count).Select(i => (double)i).ToArray(), groups.ToArray());
        plot.Axes.Margins(bottom: 0);
        plot.Title(title);
        plot.YLabel(yLabel);
        plot.ShowLegend();
        Save(plot, path, 900, 520);
    }

    static void Save(Plot plot, string path, int width, int height)
    {
        Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(path))!);
        var temp = path + ".tmp.png";
        plot.SavePng(temp, width, height);
        File.Move(temp, path, true);
    }
}
