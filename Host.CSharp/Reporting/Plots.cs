using ScottPlot;
using static TorchSharp.torch;

namespace Ssl.Host.Reporting;

/// <summary>A laid-out figure: its plot and the size it is drawn at (tests read where things landed).</summary>
public sealed class Figure(Plot plot, int width, int height) : IDisposable
{
    public Plot Plot { get; } = plot;
    public int Width { get; } = width;
    public int Height { get; } = height;

    /// <summary>Lays the plot out at its size without writing anything (then <c>Plot.GetPixel</c> answers).</summary>
    public void Render() => Plot.RenderInMemory(Width, Height);

    /// <summary>Writes the PNG to a temp file, then renames it over <paramref name="path"/>.</summary>
    public void Save(string path)
    {
        Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(path))!);
        var temp = path + ".tmp.png";
        Plot.SavePng(temp, Width, Height);
        File.Move(temp, path, true);
    }

    public void Dispose() => Plot.Dispose();
}

/// <summary>PNG figures of a run (ScottPlot): curves over training, 2-D feature maps, method-vs-baseline bars.</summary>
public static class Plots
{
    /// <summary>Marker diameter (px) of a series of a single point: a dot a reader finds at a glance.</summary>
    public const float LonePointMarkerSize = 12;

    /// <summary>Bar thickness (px) in <see cref="BarChart"/>; a group of bars is as tall as its bars and a gap.</summary>
    public const int BarThickness = 11;

    /// <summary>One line per series over a shared x axis (e.g. loss against step); NaN points are skipped.</summary>
    public static void Curves(string path, string title, string xLabel, string yLabel,
                              IReadOnlyDictionary<string, (double[] X, double[] Y)> series)
    {
        using var figure = CurveChart(title, xLabel, yLabel, series);
        figure.Save(path);
    }

    /// <summary>
    /// The figure of <see cref="Curves"/>. Series are drawn in <see cref="ClassPalette"/> order; a
    /// series of one point (a one-epoch run's epoch mean) is a large marker with its value written
    /// above it, so a single point reads as a figure rather than a speck.
    /// </summary>
    public static Figure CurveChart(string title, string xLabel, string yLabel,
                                    IReadOnlyDictionary<string, (double[] X, double[] Y)> series)
    {
        var plot = new Plot();
        var index = 0;
        foreach (var (name, (xs, ys)) in series)
        {
            var colour = ClassPalette.Of(index++);
            var keep = Enumerable.Range(0, Math.Min(xs.Length, ys.Length)).Where(i => double.IsFinite(ys[i])).ToArray();
            if (keep.Length == 0) continue;
            var line = plot.Add.Scatter(keep.Select(i => xs[i]).ToArray(), keep.Select(i => ys[i]).ToArray(), colour);
            line.LegendText = name;
            line.MarkerSize = keep.Length switch { 1 => LonePointMarkerSize, > 60 => 0, _ => 5 };
            if (keep.Length == 1)
            {
                var value = plot.Add.Text(ys[keep[0]].ToString("G4", System.Globalization.CultureInfo.InvariantCulture), xs[keep[0]], ys[keep[0]]);
                value.LabelFontColor = colour;
                value.LabelFontSize = 14;
                value.LabelAlignment = Alignment.LowerCenter;
                value.OffsetY = -(LonePointMarkerSize / 2 + 4);
            }
        }
        // Room at the sides for a lone point's value; the legend where a falling curve leaves space.
        if (plot.GetPlottables<ScottPlot.Plottables.Text>().Any()) plot.Axes.Margins(horizontal: 0.1, vertical: 0.15);
        plot.Title(title);
        plot.XLabel(xLabel);
        plot.YLabel(yLabel);
        if (series.Count > 1) plot.ShowLegend(Alignment.UpperRight);
        return new Figure(plot, 900, 520);
    }

    /// <summary>A 2-D scatter of points coloured by class (<see cref="ClassPalette"/>), with a legend of class names.</summary>
    /// <param name="points">(N, 2)</param>
    /// <param name="labels">int64 (N)</param>
    public static void ClassMap(string path, string title, Tensor points, Tensor labels, IReadOnlyList<string> classNames)
    {
        using var figure = ClassMapChart(title, points, labels, classNames);
        figure.Save(path);
    }

    /// <summary>The figure of <see cref="ClassMap"/>: dots large enough to show their colour, the legend of
    /// class names with a large swatch each at the right.</summary>
    public static Figure ClassMapChart(string title, Tensor points, Tensor labels, IReadOnlyList<string> classNames)
    {
        Ssl.Core.Shape.expect("points", new[] { Ssl.Core.Shape.Dim.Any, Ssl.Core.Shape.Dim.NewExactly(2) }, points);
        var xy = points.cpu().to_type(ScalarType.Float64).data<double>().ToArray();
        var ls = labels.cpu().data<long>().ToArray();
        var plot = new Plot();
        for (var c = 0; c < classNames.Count; c++)
        {
            var idx = Enumerable.Range(0, ls.Length).Where(i => ls[i] == c).ToArray();
            if (idx.Length == 0) continue;
            var colour = ClassPalette.Of(c);
            var dots = plot.Add.ScatterPoints(idx.Select(i => xy[2 * i]).ToArray(), idx.Select(i => xy[2 * i + 1]).ToArray(), colour);
            dots.MarkerSize = 6;
            // The legend's own, larger swatch: a 6 px dot beside a name hides its colour.
            plot.Legend.ManualItems.Add(new LegendItem
            {
                LabelText = classNames[c], LineWidth = 0, MarkerShape = MarkerShape.FilledCircle, MarkerSize = 14,
                MarkerFillColor = colour, MarkerLineColor = colour,
            });
        }
        plot.Title(title);
        plot.Legend.FontSize = 14;
        plot.ShowLegend(Edge.Right);
        return new Figure(plot, 900, 700);
    }

    /// <summary>Grouped bars: for each group (e.g. method), one bar per series (e.g. protocol).</summary>
    public static void Bars(string path, string title, string valueLabel, IReadOnlyList<string> groups,
                            IReadOnlyDictionary<string, double?[]> series)
    {
        using var figure = BarChart(title, valueLabel, groups, series);
        figure.Save(path);
    }

    /// <summary>
    /// The figure of <see cref="Bars"/>: horizontal bars, the groups' names down the left axis, the
    /// first group at the top, the series in a legend below. Its height grows with the groups, each
    /// <see cref="BarThickness"/> px per series plus a gap and never less than a name's line, so names
    /// never overprint however many methods there are; the left axis is as wide as the longest name.
    /// </summary>
    public static Figure BarChart(string title, string valueLabel, IReadOnlyList<string> groups,
                                  IReadOnlyDictionary<string, double?[]> series)
    {
        var plot = new Plot();
        var names = series.Keys.ToArray();
        var width = 0.8 / Math.Max(names.Length, 1);
        double PositionOf(int group) => groups.Count - 1 - group;
        for (var s = 0; s < names.Length; s++)
        {
            var values = series[names[s]];
            var bars = new List<Bar>();
            for (var g = 0; g < groups.Count; g++)
                if (values[g] is { } v)
                    bars.Add(new Bar { Position = PositionOf(g) + ((names.Length - 1) / 2.0 - s) * width, Value = v, Size = width * 0.95, FillColor = ClassPalette.Of(s) });
            var plotted = plot.Add.Bars(bars);
            plotted.Horizontal = true;
            plotted.LegendText = names[s];
        }
        plot.Axes.Left.TickGenerator = new ScottPlot.TickGenerators.NumericManual(
            Enumerable.Range(0, groups.Count).Select(PositionOf).ToArray(), groups.ToArray());
        plot.Axes.Left.MajorTickStyle.Length = 0;
        plot.Axes.Margins(left: 0, top: 0.5 / Math.Max(groups.Count, 1), bottom: 0.5 / Math.Max(groups.Count, 1));
        plot.Grid.YAxisStyle.MajorLineStyle.Width = 0;
        plot.Title(title);
        plot.XLabel(valueLabel);
        plot.ShowLegend(Edge.Bottom);
        using var paint = Paint.NewDisposablePaint();
        var labelHeight = plot.Axes.Left.TickLabelStyle.Measure("Hg", paint).Height;
        var groupPixels = Math.Max(Math.Max(names.Length, 1) * BarThickness / 0.8, labelHeight + 6);
        var height = Math.Max(360, 170 + (int)Math.Ceiling(groups.Count * groupPixels));
        return new Figure(plot, 900, height);
    }
}
