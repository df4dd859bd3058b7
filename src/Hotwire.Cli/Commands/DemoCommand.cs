using System.CommandLine;
using System.Diagnostics;
using System.Security.Cryptography;
using Hotwire.Patching;
using Hotwire.Procfs;
using Spectre.Console;

namespace Hotwire.Cli.Commands;

/// <summary>
/// <c>hotwire demo</c>: builds the bundled demo service with gcc, starts it, and shows what Hotwire
/// sees in the running process. It always stops the demo process before returning.
/// </summary>
public static class DemoCommand
{
    public static Command Create()
    {
        var command = new Command("demo", "Build and run the bundled demo service, and show Hotwire at work on it");
        command.SetAction(_ => (int)Run());
        return command;
    }

    public static ExitCode Run()
    {
        string program = BuildDemo();
        using Process demo = StartDemo(program);
        try
        {
            ProcessImage image = ProcessImage.Load(demo.Id);
            var sites = image.AllSites.ToList();
            var table = new Table().AddColumns("function", "module", "site address", "kind");
            foreach (PatchSite s in sites)
            {
                table.AddRow(Markup.Escape(s.Function), s.ModuleName, $"0x{s.Address:x}", s.Kind.Label());
            }
            AnsiConsole.MarkupLine($"[bold]demo[/] is running as pid [bold]{demo.Id}[/] with {CountThreads(demo.Id)} threads; "
                + $"Hotwire found [bold]{sites.Count}[/] patchable functions in {image.Modules.Count} modules without stopping it:");
            AnsiConsole.Write(table);
            AnsiConsole.MarkupLine($"Try it on your own program: [bold]hotwire ls --pid PID[/] (build with -fpatchable-function-entry=5).");
            return ExitCode.Success;
        }
        finally
        {
            demo.Kill(entireProcessTree: true);
            demo.WaitForExit();
        }
    }

    private static int CountThreads(int pid)
    {
        try
        {
            return Directory.GetDirectories($"/proc/{pid}/task").Length;
        }
        catch (IOException)
        {
            return 0;
        }
    }

    private static Process StartDemo(string program)
    {
        var psi = new ProcessStartInfo(program) { RedirectStandardInput = true, RedirectStandardOutput = true };
        Process demo = Process.Start(psi) ?? throw new HotwireException($"cannot start the demo program {program}");
        string? ready = demo.StandardOutput.ReadLine();
        if (ready is null || !ready.StartsWith("ready", StringComparison.Ordinal))
        {
            demo.Kill();
            throw new HotwireException($"the demo program {program} did not start");
        }
        return demo;
    }

    /// <summary>Compiles the embedded demo.c once into the user's cache directory.</summary>
    internal static string BuildDemo()
    {
        using Stream source = typeof(DemoCommand).Assembly.GetManifestResourceStream("demo.c")
            ?? throw new InvalidOperationException("demo.c is not embedded");
        using var reader = new StreamReader(source);
        string text = reader.ReadToEnd();
        string hash = Convert.ToHexStringLower(SHA256.HashData(System.Text.Encoding.UTF8.GetBytes(text)))[..12];
        string cache = Environment.GetEnvironmentVariable("XDG_CACHE_HOME") is { Length: > 0 } xdg
            ? xdg
            : Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".cache");
        string dir = Path.Combine(cache, "hotwire", $"demo-{hash}");
        string program = Path.Combine(dir, "demo");
        if (File.Exists(program))
        {
            return program;
        }
        Directory.CreateDirectory(dir);
        string sourcePath = Path.Combine(dir, "demo.c");
        File.WriteAllText(sourcePath, text);
        string temp = program + ".tmp";
        var psi = new ProcessStartInfo("gcc") { RedirectStandardError = true };
        foreach (string a in new[] { "-O2", "-g", "-pthread", "-fpatchable-function-entry=5", sourcePath, "-o", temp })
        {
            psi.ArgumentList.Add(a);
        }
        Process gcc;
        try
        {
            gcc = Process.Start(psi)!;
        }
        catch (System.ComponentModel.Win32Exception)
        {
            throw new HotwireException("gcc is not installed: the demo compiles its target with gcc (apt-get install gcc)");
        }
        string errors = gcc.StandardError.ReadToEnd();
        gcc.WaitForExit();
        if (gcc.ExitCode != 0)
        {
            throw new HotwireException($"gcc failed to build the demo: {errors.Split('\n')[0]}");
        }
        File.Move(temp, program, overwrite: true);
        return program;
    }
}
