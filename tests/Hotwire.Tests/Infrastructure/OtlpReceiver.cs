using System.Buffers.Binary;
using System.Net;
using System.Text;

namespace Hotwire.Tests.Infrastructure;

/// <summary>
/// An OTLP/HTTP metrics receiver on loopback: takes the POSTs an exporter sends to /v1/metrics and
/// decodes their protobuf (ExportMetricsServiceRequest, field numbers of opentelemetry-proto's
/// metrics.proto, common.proto and resource.proto) into points. No collector of the
/// OpenTelemetry project installs here (none in Debian 12; Prometheus 2.42 predates its OTLP
/// receiver), so this one decodes the wire format itself: what the exporter sends must be valid
/// OTLP down to the field numbers and wire types for a test to pass.
/// </summary>
public sealed class OtlpReceiver : IDisposable
{
    private readonly HttpListener _listener = new();
    private readonly List<Point> _points = [];
    private readonly Dictionary<string, object> _resource = [];
    private readonly List<string> _errors = [];
    private readonly Task _loop;

    public sealed record Point(string Name, Dictionary<string, object> Attributes)
    {
        public double Value { get; init; }
        public bool Monotonic { get; init; }
        public ulong Count { get; init; }
        public double Sum { get; init; }
        public List<ulong> BucketCounts { get; } = [];
        public List<double> Bounds { get; } = [];
    }

    public OtlpReceiver()
    {
        int port = Hotwire.Tests.MetricsTests.FreePort();
        Url = $"http://127.0.0.1:{port}";
        _listener.Prefixes.Add(Url + "/");
        _listener.Start();
        _loop = Task.Run(Serve);
    }

    /// <summary>The collector's base URL (the exporter posts to /v1/metrics under it).</summary>
    public string Url { get; }

    public Dictionary<string, object> Resource
    {
        get
        {
            lock (_points)
            {
                return new Dictionary<string, object>(_resource);
            }
        }
    }

    /// <summary>The first point of metric <paramref name="name"/> matching <paramref name="match"/>, within 30 s.</summary>
    public Point Await(string name, Func<Point, bool> match)
    {
        var deadline = Stopwatch.StartNew();
        while (deadline.Elapsed < TimeSpan.FromSeconds(30))
        {
            lock (_points)
            {
                if (_errors.Count > 0)
                {
                    throw new Xunit.Sdk.XunitException($"the receiver could not decode what was sent: {_errors[0]}");
                }
                if (_points.LastOrDefault(p => p.Name == name && match(p)) is { } point)
                {
                    return point;
                }
            }
            Thread.Sleep(100);
        }
        lock (_points)
        {
            var last = _points.LastOrDefault(p => p.Name == name);
            throw new Xunit.Sdk.XunitException($"no matching {name} point within 30 s ({_points.Count} points received; last {name}: value {last?.Value}, count {last?.Count})");
        }
    }

    private async Task Serve()
    {
        while (_listener.IsListening)
        {
            HttpListenerContext context;
            try
            {
                context = await _listener.GetContextAsync();
            }
            catch (Exception e) when (e is HttpListenerException or ObjectDisposedException)
            {
                return;
            }
            var body = new MemoryStream();
            await context.Request.InputStream.CopyToAsync(body);
            bool ok = context.Request.HttpMethod == "POST" && context.Request.Url!.AbsolutePath == "/v1/metrics"
                && context.Request.ContentType == "application/x-protobuf";
            lock (_points)
            {
                try
                {
                    if (!ok)
                    {
                        throw new InvalidDataException($"{context.Request.HttpMethod} {context.Request.Url} ({context.Request.ContentType})");
                    }
                    Decode(body.ToArray());
                }
                catch (Exception e) when (e is InvalidDataException or ArgumentOutOfRangeException or IndexOutOfRangeException)
                {
                    _errors.Add(e.Message);
                }
            }
            context.Response.StatusCode = ok ? 200 : 400;
            context.Response.ContentType = "application/x-protobuf";
            context.Response.Close();   // an empty ExportMetricsServiceResponse
        }
    }

    // ---- The protobuf wire format: (field << 3 | wire type) keys; varint, fixed64, length-delimited, fixed32.
    private readonly record struct Field(int Number, int Type, ulong Scalar, ReadOnlyMemory<byte> Bytes);

    private static IEnumerable<Field> Fields(ReadOnlyMemory<byte> message)
    {
        int at = 0;
        while (at < message.Length)
        {
            ulong key = Varint(message.Span, ref at);
            int number = (int)(key >> 3), type = (int)(key & 7);
            switch (type)
            {
                case 0:
                    yield return new Field(number, type, Varint(message.Span, ref at), default);
                    break;
                case 1:
                    yield return new Field(number, type, BinaryPrimitives.ReadUInt64LittleEndian(message.Span[at..]), default);
                    at += 8;
                    break;
                case 2:
                    int length = checked((int)Varint(message.Span, ref at));
                    yield return new Field(number, type, 0, message.Slice(at, length));
                    at += length;
                    break;
                case 5:
                    yield return new Field(number, type, BinaryPrimitives.ReadUInt32LittleEndian(message.Span[at..]), default);
                    at += 4;
                    break;
                default:
                    throw new InvalidDataException($"wire type {type} at byte {at}");
            }
        }
    }

    private static ulong Varint(ReadOnlySpan<byte> s, ref int at)
    {
        ulong value = 0;
        for (int shift = 0; shift < 64; shift += 7)
        {
            byte b = s[at++];
            value |= (ulong)(b & 0x7f) << shift;
            if (b < 0x80)
            {
                return value;
            }
        }
        throw new InvalidDataException("varint longer than 10 bytes");
    }

    private static string Text(Field f) => f.Type == 2 ? Encoding.UTF8.GetString(f.Bytes.Span) : throw new InvalidDataException($"field {f.Number} is not a string");

    private static IEnumerable<double> Doubles(Field f) => f.Type == 1
        ? [BitConverter.UInt64BitsToDouble(f.Scalar)]
        : Enumerable.Range(0, f.Bytes.Length / 8).Select(i => BinaryPrimitives.ReadDoubleLittleEndian(f.Bytes.Span[(i * 8)..]));

    private static IEnumerable<ulong> Fixed64s(Field f) => f.Type == 1
        ? [f.Scalar]
        : Enumerable.Range(0, f.Bytes.Length / 8).Select(i => BinaryPrimitives.ReadUInt64LittleEndian(f.Bytes.Span[(i * 8)..]));

    private void Decode(ReadOnlyMemory<byte> request)
    {
        foreach (Field resourceMetrics in Fields(request).Where(f => f.Number == 1))
        {
            foreach (Field f in Fields(resourceMetrics.Bytes))
            {
                if (f.Number == 1)
                {
                    foreach (Field kv in Fields(f.Bytes).Where(a => a.Number == 1))
                    {
                        (string key, object value) = KeyValue(kv);
                        _resource[key] = value;
                    }
                }
                else if (f.Number == 2)
                {
                    foreach (Field metric in Fields(f.Bytes).Where(m => m.Number == 2))
                    {
                        DecodeMetric(metric.Bytes);
                    }
                }
            }
        }
    }

    private void DecodeMetric(ReadOnlyMemory<byte> metric)
    {
        string name = "";
        foreach (Field f in Fields(metric))
        {
            if (f.Number == 1)
            {
                name = Text(f);
            }
            else if (f.Number == 7)   // Sum
            {
                bool monotonic = Fields(f.Bytes).Any(x => x.Number == 3 && x.Scalar != 0);
                foreach (Field dp in Fields(f.Bytes).Where(x => x.Number == 1))
                {
                    var attributes = new Dictionary<string, object>();
                    double value = double.NaN;
                    foreach (Field x in Fields(dp.Bytes))
                    {
                        switch (x.Number)
                        {
                            case 7: (string k, object v) = KeyValue(x); attributes[k] = v; break;
                            case 4: value = BitConverter.UInt64BitsToDouble(x.Scalar); break;   // as_double
                            case 6: value = (long)x.Scalar; break;                               // as_int (sfixed64)
                        }
                    }
                    _points.Add(new Point(name, attributes) { Value = value, Monotonic = monotonic });
                }
            }
            else if (f.Number == 9)   // Histogram
            {
                foreach (Field dp in Fields(f.Bytes).Where(x => x.Number == 1))
                {
                    var attributes = new Dictionary<string, object>();
                    ulong count = 0;
                    double sum = 0;
                    var buckets = new List<ulong>();
                    var bounds = new List<double>();
                    foreach (Field x in Fields(dp.Bytes))
                    {
                        switch (x.Number)
                        {
                            case 9: (string k, object v) = KeyValue(x); attributes[k] = v; break;
                            case 4: count = x.Scalar; break;
                            case 5: sum = BitConverter.UInt64BitsToDouble(x.Scalar); break;
                            case 6: buckets.AddRange(Fixed64s(x)); break;
                            case 7: bounds.AddRange(Doubles(x)); break;
                        }
                    }
                    var point = new Point(name, attributes) { Count = count, Sum = sum };
                    point.BucketCounts.AddRange(buckets);
                    point.Bounds.AddRange(bounds);
                    _points.Add(point);
                }
            }
        }
    }

    private static (string Key, object Value) KeyValue(Field kv)
    {
        string key = "";
        object value = "";
        foreach (Field f in Fields(kv.Bytes))
        {
            if (f.Number == 1)
            {
                key = Text(f);
            }
            else if (f.Number == 2)
            {
                foreach (Field any in Fields(f.Bytes))
                {
                    value = any.Number switch
                    {
                        1 => Text(any),
                        2 => any.Scalar != 0,
                        3 => (long)any.Scalar,
                        4 => BitConverter.UInt64BitsToDouble(any.Scalar),
                        _ => throw new InvalidDataException($"AnyValue field {any.Number}"),
                    };
                }
            }
        }
        return (key, value);
    }

    public void Dispose()
    {
        _listener.Stop();
        _listener.Close();
        _loop.Wait(5000);
    }
}
