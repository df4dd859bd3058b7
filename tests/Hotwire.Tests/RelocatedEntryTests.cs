using System.Diagnostics;
using Hotwire.Elf;
using Hotwire.Patching;
using Hotwire.Tests.Infrastructure;
using Xunit;

namespace Hotwire.Tests;

/// <summary>
/// Functions without a compiler site, traced in a running process through relocated entries
/// (SessionOptions.RelocateEntries): in the program and in libc, while 4 threads call them.
/// </summary>
[Collection("engine")]
public class RelocatedEntryTests
{
    private static long Run(TargetProcess target, long calls)
    {
        target.WriteLine($"run {calls}");
        string? line = target.ReadLine(TimeSpan.FromSeconds(60));
        Assert.NotNull(line);
        Assert.StartsWith("done ", line, StringComparison.Ordinal);
        return long.Parse(line["done ".Length..]);
    }

    private static byte[] Live(int pid, ulong address, int length)
    {
        using var mem = new FileStream($"/proc/{pid}/mem", FileMode.Open, FileAccess.Read);
        mem.Seek((long)address, SeekOrigin.Begin);
        byte[] b = new byte[length];
        mem.ReadExactly(b);
        return b;
    }

    [Fact]
    public void Every_call_of_a_function_without_a_site_is_counted_in_the_program_and_in_libc_and_detach_restores_it()
    {
        string prog = TargetBuilder.Get(Flavour.Unmodified);
        using TargetProcess target = TargetProcess.Start(prog);
        long expected = Run(target, 1000); // untraced: the sum to compare with
        const long Calls = 50_000;
        long untraced = Run(target, Calls);

        using Session session = Session.Attach(target.Pid, new SessionOptions { RelocateEntries = true });
        var work = new CountingOps(["work"], name: "work");
        var malloc = new CountingOps(["malloc:mod:libc.so.6"], name: "malloc");
        SiteRecord site = Assert.Single(session.Register(work));
        Assert.Equal(SiteKind.Relocated, site.Site.Kind);
        SiteRecord mallocSite = Assert.Single(session.Register(malloc));
        byte[] original = site.Site.OriginalBytes;
        Assert.NotEqual(original, Live(target.Pid, site.Address, 5)); // a jmp now

        Assert.Equal(untraced, Run(target, Calls));           // the program's results are unchanged
        Assert.Equal((ulong)(4 * Calls), work.Count("work"));          // every call, once
        Assert.Equal((ulong)(4 * Calls), malloc.Count("malloc"));

        // Off and on again: the original bytes, then the jmp.
        session.Unregister(work);
        Assert.Equal(original, Live(target.Pid, site.Address, 5));
        Assert.Equal(untraced, Run(target, Calls));
        session.Register(work);
        Assert.Equal(untraced, Run(target, Calls));
        Assert.Equal((ulong)(2 * 4 * Calls), work.Count("work"));     // its counters carry on from the first time

        session.Detach();
        Assert.Equal(original, Live(target.Pid, site.Address, 5));
        Assert.Equal(mallocSite.Site.OriginalBytes, Live(target.Pid, mallocSite.Address, 5));
        Assert.Equal(expected, Run(target, 1000));
    }

    [Fact]
    public void Count_relocate_counts_a_program_function_and_malloc_exactly_and_ctrl_c_restores_them()
    {
        string prog = TargetBuilder.Get(Flavour.Unmodified);
        using TargetProcess target = TargetProcess.Start(prog);
        (ulong work, ulong malloc) = (Entry(target.Pid, prog, "work"), Entry(target.Pid, "/usr/lib/x86_64-linux-gnu/libc.so.6", "malloc"));
        byte[] workBytes = Live(target.Pid, work, 5), mallocBytes = Live(target.Pid, malloc, 5);
        using Process hotwire = HotwireCli.Start("count", "--relocate", "--pid", target.Pid.ToString(), "-F", "work", "-F", "malloc:mod:libc.so.6");
        Assert.Equal($"hotwire: counting calls of 2 functions in pid {target.Pid}; Ctrl-C to stop", hotwire.StandardError.ReadLine());
        Run(target, 25_000);
        Hotwire.Interop.Ptrace.kill(hotwire.Id, 2); // SIGINT
        string output = hotwire.StandardOutput.ReadToEnd();
        hotwire.WaitForExit();
        Assert.Equal(0, hotwire.ExitCode);
        var counts = output.Split('\n', StringSplitOptions.RemoveEmptyEntries).Where(l => !l.StartsWith('#'))
            .Select(l => l.Split(' ', StringSplitOptions.RemoveEmptyEntries)).ToDictionary(f => f[1], f => long.Parse(f[0]));
        Assert.Equal(100_000, counts["work"]);
        Assert.Equal(100_000, counts["malloc"]);
        Assert.Equal(workBytes, Live(target.Pid, work, 5));
        Assert.Equal(mallocBytes, Live(target.Pid, malloc, 5));
    }

    [Fact]
    public void SIGKILL_of_hotwire_leaves_relocated_entries_restored_by_the_dead_man_switch()
    {
        string prog = TargetBuilder.Get(Flavour.Unmodified);
        using TargetProcess target = TargetProcess.Start(prog);
        long expected = Run(target, 2000);
        ulong work = Entry(target.Pid, prog, "work");
        byte[] original = Live(target.Pid, work, 5);
        using Process hotwire = HotwireCli.Start("count", "--relocate", "--pid", target.Pid.ToString(), "-F", "work", "-F", "malloc:mod:libc.so.6");
        hotwire.StandardError.ReadLine();
        Assert.NotEqual(original, Live(target.Pid, work, 5));
        hotwire.Kill();
        hotwire.WaitForExit();
        var deadline = Stopwatch.StartNew();
        while (!Live(target.Pid, work, 5).AsSpan().SequenceEqual(original) && deadline.ElapsedMilliseconds < 5000)
        {
            Thread.Sleep(20);
        }
        Assert.Equal(original, Live(target.Pid, work, 5));
        Assert.Equal(expected, Run(target, 2000));
    }

    /// <summary>The runtime address of a function's relocated bytes (past endbr64) in <paramref name="file"/> as mapped in pid.</summary>
    private static ulong Entry(int pid, string file, string function)
    {
        var image = Hotwire.Procfs.ProcessImage.Load(pid);
        var module = image.Modules.Single(m => m.Path == file || Path.GetFileName(m.Path) == Path.GetFileName(file));
        var catalog = Hotwire.Symbols.FunctionCatalog.Of(module.Elf, module.Path);
        var f = catalog.Functions.First(x => x.Name == function);
        byte[] body = new byte[f.Size];
        Assert.True(module.Elf.TryReadVirtual(f.Address, body));
        return EntryClassifier.Classify(body, f.Address, []).Patch + module.Bias;
    }
}
