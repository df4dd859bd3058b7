using System.Globalization;
using System.Text;
using System.Xml;

namespace Hotwire.Output;

/// <summary>
/// Flame graphs of a <see cref="CallTree"/>: Brendan Gregg's folded stacks (what flamegraph.pl,
/// speedscope and inferno read), and a self-contained interactive SVG drawn here.
/// </summary>
public static class FlameGraph
{
    private const double ImageWidth = 1200;
    private const double Pad = 10;
    private const double FrameHeight = 16;
    private const double FontSize = 12;
    private const double FontWidth = 0.59; // of the font size, for a proportional sans-serif
    private const double TopPad = FontSize * 3;
    private const double BottomPad = FontSize * 2 + 10;
    private const double MinWidth = 0.1; // pixels, as flamegraph.pl's --minwidth: narrower frames are left out
    private const string SvgNs = "http://www.w3.org/2000/svg";

    /// <summary>
    /// One line per distinct stack, outermost first: <c>main;foo;bar 12345</c>, the value being
    /// the self time in ns of that stack summed over threads. Stacks with no self time are left out.
    /// </summary>
    public static void WriteFolded(TextWriter w, CallTree tree, SiteNames names, TraceTime time)
    {
        var path = new StringBuilder(256);
        foreach (int child in tree.Children(CallTree.Root))
        {
            WriteFolded(w, tree, child, names, time, path);
        }
    }

    private static void WriteFolded(TextWriter w, CallTree tree, int node, SiteNames names, TraceTime time, StringBuilder path)
    {
        int length = path.Length;
        if (length > 0)
        {
            path.Append(';');
        }
        // A ';' would split the frame and the last space separates the value: neither may be in a name.
        path.Append(names.Function(tree.Site(node)).Replace(';', ':'));
        long self = time.DurationNs(tree.SelfTicks(node));
        if (self > 0)
        {
            w.Write(path);
            w.Write(' ');
            w.Write(self.ToString(CultureInfo.InvariantCulture));
            w.Write('\n');
        }
        foreach (int child in tree.Children(node))
        {
            WriteFolded(w, tree, child, names, time, path);
        }
        path.Length = length;
    }

    /// <summary>
    /// An SVG flame graph: a frame per call path, as wide as its total time, callees stacked on
    /// their callers, siblings in alphabetical order; hover for figures, click to zoom, Ctrl-F or
    /// "Search" to highlight functions matching a regular expression.
    /// </summary>
    public static void WriteSvg(TextWriter output, CallTree tree, SiteNames names, TraceTime time, string title)
    {
        ulong[] widths = tree.InclusiveTicks();
        ulong rootTicks = Math.Max(widths[CallTree.Root], 1);
        double scale = (ImageWidth - 2 * Pad) / rootTicks;
        int depth = Height(tree, widths, CallTree.Root, scale);
        double imageHeight = TopPad + BottomPad + depth * FrameHeight;

        var settings = new XmlWriterSettings { Indent = false, NewLineChars = "\n", OmitXmlDeclaration = false };
        using XmlWriter x = XmlWriter.Create(output, settings);
        x.WriteStartDocument();
        x.WriteStartElement("svg", SvgNs);
        x.WriteAttributeString("version", "1.1");
        x.WriteAttributeString("width", Num(ImageWidth));
        x.WriteAttributeString("height", Num(imageHeight));
        x.WriteAttributeString("viewBox", $"0 0 {Num(ImageWidth)} {Num(imageHeight)}");
        x.WriteAttributeString("onload", "init(evt)");

        x.WriteStartElement("defs", SvgNs);
        x.WriteStartElement("linearGradient", SvgNs);
        x.WriteAttributeString("id", "background");
        x.WriteAttributeString("y1", "0");
        x.WriteAttributeString("y2", "1");
        x.WriteAttributeString("x1", "0");
        x.WriteAttributeString("x2", "0");
        Stop(x, "5%", "#eeeeee");
        Stop(x, "95%", "#eeeeb0");
        x.WriteEndElement();
        x.WriteEndElement();

        x.WriteStartElement("style", SvgNs);
        x.WriteAttributeString("type", "text/css");
        x.WriteString(Style);
        x.WriteEndElement();

        x.WriteStartElement("script", SvgNs);
        x.WriteAttributeString("type", "text/ecmascript");
        x.WriteCData(Script
            .Replace("@WIDTH@", Num(ImageWidth), StringComparison.Ordinal)
            .Replace("@PAD@", Num(Pad), StringComparison.Ordinal)
            .Replace("@CHAR@", Num(FontSize * FontWidth), StringComparison.Ordinal));
        x.WriteEndElement();

        Rect(x, 0, 0, ImageWidth, imageHeight, "url(#background)", null);
        Text(x, "title", ImageWidth / 2, FontSize * 2, title, "middle");
        Text(x, "details", Pad, imageHeight - BottomPad / 2 + 4, " ", null);
        Text(x, "unzoom", Pad, FontSize * 2, "Reset Zoom", null, hidden: true);
        Text(x, "search", ImageWidth - Pad - 100, FontSize * 2, "Search", null);
        Text(x, "matched", ImageWidth - Pad - 100, imageHeight - BottomPad / 2 + 4, " ", null);

        x.WriteStartElement("g", SvgNs);
        x.WriteAttributeString("id", "frames");
        var frame = new FrameWriter(x, tree, widths, names, time, scale, imageHeight - BottomPad, rootTicks);
        frame.Write(CallTree.Root, 0, Pad);
        x.WriteEndElement();

        x.WriteEndElement();
        x.WriteEndDocument();
    }

    /// <summary>Rows needed: frames narrower than the minimum width (and so their callees) are not drawn.</summary>
    private static int Height(CallTree tree, ulong[] widths, int node, double scale)
    {
        int height = 0;
        foreach (int child in tree.Children(node))
        {
            if (widths[child] * scale >= MinWidth)
            {
                height = Math.Max(height, Height(tree, widths, child, scale));
            }
        }
        return height + 1;
    }

    private static void Stop(XmlWriter x, string offset, string color)
    {
        x.WriteStartElement("stop", SvgNs);
        x.WriteAttributeString("stop-color", color);
        x.WriteAttributeString("offset", offset);
        x.WriteEndElement();
    }

    private static void Rect(XmlWriter x, double left, double top, double width, double height, string fill, string? rounded)
    {
        x.WriteStartElement("rect", SvgNs);
        x.WriteAttributeString("x", Num(left));
        x.WriteAttributeString("y", Num(top));
        x.WriteAttributeString("width", Num(width));
        x.WriteAttributeString("height", Num(height));
        x.WriteAttributeString("fill", fill);
        if (rounded is not null)
        {
            x.WriteAttributeString("rx", rounded);
            x.WriteAttributeString("ry", rounded);
        }
        x.WriteEndElement();
    }

    private static void Text(XmlWriter x, string id, double left, double top, string text, string? anchor, bool hidden = false)
    {
        x.WriteStartElement("text", SvgNs);
        x.WriteAttributeString("id", id);
        x.WriteAttributeString("x", Num(left));
        x.WriteAttributeString("y", Num(top));
        if (anchor is not null)
        {
            x.WriteAttributeString("text-anchor", anchor);
        }
        if (hidden)
        {
            x.WriteAttributeString("class", "hide");
        }
        x.WriteString(text);
        x.WriteEndElement();
    }

    private static string Num(double v) => v.ToString("0.##", CultureInfo.InvariantCulture);

    /// <summary>Characters XML 1.0 cannot hold (control characters) become '?'.</summary>
    private static string Clean(string s)
    {
        foreach (char c in s)
        {
            if (c < 0x20 || char.IsSurrogate(c) || c is '\uFFFE' or '\uFFFF')
            {
                return string.Create(s.Length, s, (span, src) =>
                {
                    for (int i = 0; i < src.Length; i++)
                    {
                        char ch = src[i];
                        span[i] = ch < 0x20 || char.IsSurrogate(ch) || ch is '\uFFFE' or '\uFFFF' ? '?' : ch;
                    }
                });
            }
        }
        return s;
    }

    /// <summary>The name as much as fits in <paramref name="width"/> pixels, ".." marking a cut; empty if hardly anything fits.</summary>
    private static string Fit(string name, double width)
    {
        int chars = (int)((width - 6) / (FontSize * FontWidth));
        if (chars < 3)
        {
            return "";
        }
        return name.Length <= chars ? name : name[..(chars - 2)] + "..";
    }

    /// <summary>flamegraph.pl's "hot" palette, picked from the name so a function keeps its colour across graphs.</summary>
    private static string Color(string name)
    {
        uint hash = 2166136261;
        foreach (char c in name)
        {
            hash = (hash ^ c) * 16777619;
        }
        double v1 = (hash & 0xff) / 255.0, v2 = ((hash >> 8) & 0xff) / 255.0, v3 = ((hash >> 16) & 0xff) / 255.0;
        int r = 205 + (int)(50 * v3), g = (int)(230 * v1), b = (int)(55 * v2);
        return string.Create(CultureInfo.InvariantCulture, $"rgb({r},{g},{b})");
    }

    // A frame is as wide as the stacks it holds (its inclusive ticks); its hover shows its measured total.
    private sealed class FrameWriter(XmlWriter x, CallTree tree, ulong[] widths, SiteNames names, TraceTime time, double scale, double bottom, ulong rootTicks)
    {
        public void Write(int node, int level, double left)
        {
            ulong ticks = tree.TotalTicks(node);
            double width = widths[node] * scale;
            string name = Clean(node == CallTree.Root ? "all" : names.Function(tree.Site(node)));
            double top = bottom - (level + 1) * FrameHeight;
            long calls = tree.Calls(node);
            string figures = node == CallTree.Root
                ? $"{name} ({TimeUnits.Format(time.DurationNs(ticks)).Trim()}, 100%)"
                : string.Create(CultureInfo.InvariantCulture,
                    $"{name} ({calls} call{(calls == 1 ? "" : "s")}, total {TimeUnits.Format(time.DurationNs(ticks)).Trim()}, self {TimeUnits.Format(time.DurationNs(tree.SelfTicks(node))).Trim()}, {100.0 * widths[node] / rootTicks:0.##}%)");

            x.WriteStartElement("g", SvgNs);
            x.WriteAttributeString("class", "f");
            x.WriteAttributeString("data-name", name);
            x.WriteStartElement("title", SvgNs);
            x.WriteString(figures);
            x.WriteEndElement();
            Rect(x, left, top, width, FrameHeight - 1, node == CallTree.Root ? "rgb(230,120,60)" : Color(name), "2");
            x.WriteStartElement("text", SvgNs);
            x.WriteAttributeString("x", Num(left + 3));
            x.WriteAttributeString("y", Num(top + FrameHeight - 4.5));
            x.WriteString(Fit(name, width));
            x.WriteEndElement();
            x.WriteEndElement();

            List<int> children = tree.Children(node);
            children.Sort((a, b) => string.CompareOrdinal(names.Function(tree.Site(a)), names.Function(tree.Site(b))));
            double at = left;
            foreach (int child in children)
            {
                double childWidth = widths[child] * scale;
                if (childWidth >= MinWidth)
                {
                    Write(child, level + 1, at);
                }
                at += childWidth;
            }
        }
    }

    private const string Style = """
        text { font-family: Verdana, sans-serif; font-size: 12px; fill: rgb(0,0,0); }
        #title { font-size: 17px; }
        #search, #unzoom { cursor: pointer; }
        #search { opacity: 0.5; }
        #search:hover, #search.show { opacity: 1; }
        .hide { display: none; }
        g.f:hover { stroke: black; stroke-width: 0.5; cursor: pointer; }
        g.f text { pointer-events: none; }
        g.parent { opacity: 0.5; }
        """;

    // Zoom and search in the manner of flamegraph.pl: a clicked frame fills the width, its callers
    // stay below it at full width (dimmed), frames outside it are hidden.
    private const string Script = """
        "use strict";
        var WIDTH = @WIDTH@, PAD = @PAD@, CHAR = @CHAR@;
        var frames = [], details, matched, unzoomBtn, searchBtn, searching = null;
        function init(evt) {
            details = document.getElementById("details");
            matched = document.getElementById("matched");
            unzoomBtn = document.getElementById("unzoom");
            searchBtn = document.getElementById("search");
            var gs = document.querySelectorAll("g.f");
            for (var i = 0; i < gs.length; i++) {
                var g = gs[i], r = g.querySelector("rect");
                var f = { g: g, r: r, t: g.querySelector("text"), name: g.getAttribute("data-name"),
                    info: g.querySelector("title").textContent, fill: r.getAttribute("fill"),
                    x: +r.getAttribute("x"), w: +r.getAttribute("width"), y: +r.getAttribute("y") };
                frames.push(f);
                g.addEventListener("click", zoomTo.bind(null, f));
                g.addEventListener("mouseover", function (f) { details.textContent = f.info; }.bind(null, f));
                g.addEventListener("mouseout", function () { details.textContent = " "; });
            }
            unzoomBtn.addEventListener("click", unzoom);
            searchBtn.addEventListener("click", search);
            window.addEventListener("keydown", function (e) {
                if ((e.ctrlKey || e.metaKey) && e.key === "f") { e.preventDefault(); search(); }
                else if (e.key === "Escape") { unzoom(); clearSearch(); }
            });
        }
        function place(f, x, w) {
            f.r.setAttribute("x", x);
            f.r.setAttribute("width", w);
            f.t.setAttribute("x", x + 3);
            var n = Math.floor((w - 6) / CHAR);
            f.t.textContent = n < 3 ? "" : f.name.length <= n ? f.name : f.name.substring(0, n - 2) + "..";
        }
        function zoomTo(z) {
            var scale = (WIDTH - 2 * PAD) / z.w, eps = 1e-6;
            frames.forEach(function (f) {
                f.g.classList.remove("parent");
                var inside = f.x >= z.x - eps && f.x + f.w <= z.x + z.w + eps;
                var around = f.x <= z.x + eps && f.x + f.w >= z.x + z.w - eps;
                if (f.y >= z.y && around) {
                    f.g.classList.remove("hide");
                    if (f !== z) f.g.classList.add("parent");
                    place(f, PAD, WIDTH - 2 * PAD);
                } else if (f.y < z.y && inside) {
                    f.g.classList.remove("hide");
                    place(f, PAD + (f.x - z.x) * scale, f.w * scale);
                } else {
                    f.g.classList.add("hide");
                }
            });
            unzoomBtn.classList.remove("hide");
        }
        function unzoom() {
            frames.forEach(function (f) {
                f.g.classList.remove("hide");
                f.g.classList.remove("parent");
                place(f, f.x, f.w);
            });
            unzoomBtn.classList.add("hide");
        }
        function clearSearch() {
            frames.forEach(function (f) { f.r.setAttribute("fill", f.fill); });
            matched.textContent = " ";
            searchBtn.classList.remove("show");
            searching = null;
        }
        function search() {
            var term = prompt("Search for functions (regular expression):", searching || "");
            if (term === null) return;
            clearSearch();
            if (term === "") return;
            var re;
            try { re = new RegExp(term); } catch (e) { matched.textContent = "Bad expression"; return; }
            searching = term;
            searchBtn.classList.add("show");
            var spans = [], total = frames.length > 0 ? frames[0].w : 0;
            frames.forEach(function (f, i) {
                if (i > 0 && re.test(f.name)) {
                    f.r.setAttribute("fill", "rgb(230,0,230)");
                    spans.push([f.x, f.x + f.w]);
                }
            });
            spans.sort(function (a, b) { return a[0] - b[0]; });
            var covered = 0, end = -Infinity;
            spans.forEach(function (s) {
                if (s[0] >= end) { covered += s[1] - s[0]; end = s[1]; }
                else if (s[1] > end) { covered += s[1] - end; end = s[1]; }
            });
            matched.textContent = "Matched: " + (total > 0 ? (100 * covered / total).toFixed(2) : "0") + "%";
        }
        """;
}
