using System.CommandLine;
using System.Globalization;
using OpenTelemetry.Exporter;

namespace Hotwire.Cli.Metrics;

/// <summary>The options that send the profiler's figures to Prometheus or an OpenTelemetry collector (top, metrics, record --tracer profile).</summary>
public sealed class MetricsOptions
{
    public Option<string?> Prometheus { get; } = new("--prometheus")
    {
        Description = "Serve the profile as Prometheus metrics on [ADDR:]PORT (path /metrics; all interfaces without ADDR)",
        HelpName = "[ADDR:]PORT",
    };

    public Option<string?> Otlp { get; } = new("--otlp")
    {
        Description = "Push the profile as OTLP metrics to this collector URL (e.g. http://localhost:4318)",
        HelpName = "URL",
    };

    public Option<string> OtlpProtocol { get; } = new("--otlp-protocol")
    {
        Description = "http (OTLP/HTTP protobuf, port 4318) or grpc (port 4317)",
        DefaultValueFactory = _ => "http",
    };

    public Option<TimeSpan?> ExportInterval { get; } = OptionValues.Seconds("--export-interval", "How often OTLP pushes (default 10 s; Prometheus pulls when it scrapes)");

    public void AddTo(Command command)
    {
        command.Options.Add(Prometheus);
        command.Options.Add(Otlp);
        command.Options.Add(OtlpProtocol);
        command.Options.Add(ExportInterval);
    }

    /// <summary>What the user asked for, checked: every mistake is a one-line usage error.</summary>
    public MetricsTargets Parse(ParseResult result)
    {
        string? host = null;
        int? port = null;
        if (result.GetValue(Prometheus) is { } listen)
        {
            (host, port) = ParseListen(listen);
        }
        Uri? otlp = null;
        string protocolName = result.GetValue(OtlpProtocol) ?? "http";
        OtlpExportProtocol protocol = protocolName switch
        {
            "http" => OtlpExportProtocol.HttpProtobuf,
            "grpc" => OtlpExportProtocol.Grpc,
            _ => throw new UsageException($"--otlp-protocol takes http or grpc, not '{protocolName}'"),
        };
        if (result.GetValue(Otlp) is { } url)
        {
            if (!Uri.TryCreate(url, UriKind.Absolute, out Uri? uri) || uri.Scheme is not ("http" or "https"))
            {
                throw new UsageException($"--otlp: '{url}' is not an http:// or https:// URL (example: http://localhost:4318)");
            }
            // OTLP/HTTP posts to /v1/metrics: a collector's base URL gets it added, as OTEL_EXPORTER_OTLP_ENDPOINT does.
            otlp = protocol == OtlpExportProtocol.HttpProtobuf && uri.AbsolutePath is "/" or ""
                ? new Uri(uri, "/v1/metrics")
                : uri;
        }
        TimeSpan interval = result.GetValue(ExportInterval) ?? TimeSpan.FromSeconds(10);
        if (interval < TimeSpan.FromMilliseconds(100) || interval > TimeSpan.FromHours(1))
        {
            throw new UsageException($"--export-interval takes 100ms to 1h, not {interval.TotalSeconds:0.###} s");
        }
        return new MetricsTargets(host, port, otlp, protocol, interval);
    }

    /// <summary>[ADDR:]PORT, ADDR an IPv4 address, a host name, or [IPv6].</summary>
    public static (string Host, int Port) ParseListen(string text)
    {
        string host = "*", portText = text;
        int colon = text.LastIndexOf(':');
        if (colon >= 0)
        {
            host = text[..colon];
            portText = text[(colon + 1)..];
            if (host.Length == 0 || host is "0.0.0.0" or "[::]")
            {
                host = "*";
            }
        }
        if (!int.TryParse(portText, NumberStyles.None, CultureInfo.InvariantCulture, out int port) || port is < 1 or > 65535)
        {
            throw new UsageException($"--prometheus: '{text}' is not [ADDR:]PORT (examples: 9464, 127.0.0.1:9464)");
        }
        if (host != "*" && Uri.CheckHostName(host.Trim('[', ']')) == UriHostNameType.Unknown)
        {
            throw new UsageException($"--prometheus: '{host}' is not an address or host name (examples: 9464, 127.0.0.1:9464)");
        }
        return (host, port);
    }
}
