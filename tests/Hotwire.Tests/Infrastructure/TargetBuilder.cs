using System.Security.Cryptography;
using System.Text;

namespace Hotwire.Tests.Infrastructure;

/// <summary>The flavours of patch site the test targets are built with (DESIGN.md §2).</summary>
public enum Flavour
{
    /// <summary>-pg -mfentry -mnop-mcount -mrecord-mcount, non-PIE: NOP5 recorded in __mcount_loc.</summary>
    Nop5,

    /// <summary>PIE with -fpatchable-function-entry=5: five 1-byte NOPs.</summary>
    PatchablePie,

    /// <summary>PIE with -pg -mfentry -mrecord-mcount: 6-byte call *__fentry__@GOTPCREL.</summary>
    FentryPie,

    /// <summary>-fcf-protection=full: endbr64 then the NOP sled.</summary>
    Endbr,

    /// <summary>-fcf-protection=full with the mcount flags: endbr64 then NOP5.</summary>
    EndbrNop5,

    /// <summary>Nop5 with its symbol tables stripped.</summary>
    Stripped,

    /// <summary>Plain -O2: no sites at all.</summary>
    NoSites,

    /// <summary>uselib (no sites) loading libflav.so (patchable entries).</summary>
    SharedLibrary,

    /// <summary>C++ with -fpatchable-function-entry=5, for demangled names.</summary>
    Cxx,

    /// <summary>The 50,000-function program from gen-many.sh (NOP5).</summary>
    Many,

    /// <summary>gen-many.sh's program with 10,000 functions, PIE, -fpatchable-function-entry=5.</summary>
    Many10kPie,

    /// <summary>seedcase.c (threads calling f; f_new beside it), NOP5 sites.</summary>
    SeedNop5,

    /// <summary>seedcase.c with -fpatchable-function-entry=5 (PIE): sleds converted in a running process.</summary>
    SeedSled,

    /// <summary>blocker.c: the main thread blocked in a chosen system call.</summary>
    Blocker,

    /// <summary>sigsled.c: a thread parked in a signal handler whose saved PC is byte 1 of f's sled.</summary>
    SigSled,

    /// <summary>parked.c: a thread parked in a signal handler whose saved PC is in Hotwire's code.</summary>
    Parked,

    /// <summary>manythreads.c: N threads that each call f a given number of times on "go".</summary>
    ManyThreads,

    /// <summary>coroutine.c: makecontext/swapcontext coroutines on a stack in main's frame and on the heap.</summary>
    Coroutine,

    /// <summary>execer.c: calls f, and executes /bin/sleep on the line "exec".</summary>
    Execer,

    /// <summary>waiters.c: threads blocked in the calls that fail with EINTR after a stop.</summary>
    Waiters,

    /// <summary>calls.c: deterministic call trees and bursts (PIE, patchable entries).</summary>
    Calls,

    /// <summary>graph.c: call trees for the function_graph tracer (recursion, longjmp, signals, fork, threads).</summary>
    Graph,

    /// <summary>graphxx.cpp: C++ exceptions thrown through traced frames.</summary>
    GraphCxx,

    /// <summary>patchserver.c: the multithreaded TCP server the live-patch tests fix.</summary>
    PatchServer,

    /// <summary>patchserver.c built without patch sites (-O2, PIE): its handler is replaced at a relocated entry.</summary>
    PatchServerPlain,

    /// <summary>forker.c: forks, on command, a child that keeps calling f.</summary>
    Forker,

    /// <summary>dlthreads.c (patch sites): dlopens libflav.so or libflav2.so on command and calls into it from 4 threads.</summary>
    DlThreads,

    /// <summary>dlxx.c loading libgraphxx.so (graphxx.cpp as a library) with dlopen.</summary>
    DlCxx,

    /// <summary>sigblocked.c: two threads that block every signal call f() in a tight loop.</summary>
    SigBlocked,

    /// <summary>prefork.c: a loopback server whose 4 forked workers fork a child per connection.</summary>
    Prefork,

    /// <summary>dlopener.c: loads and unloads libflav.so (beside it) with dlopen/dlclose on command.</summary>
    DlOpener,

    /// <summary>metrics.c: known numbers of calls and naps, and a spinning thread, on command (NOP5, non-PIE: restored code equals the file).</summary>
    Metrics,

    /// <summary>
    /// prologues.c without patch sites (-O2, hot/cold partitioning): prog (with .symtab), prog.debug (its
    /// debug file), prog.stripped (.dynsym and .eh_frame only), prog.linked (stripped, with a
    /// .gnu_debuglink to prog.debug beside it), prog.bare (no symbols and no .eh_frame).
    /// </summary>
    Prologues,

    /// <summary>detourrun.c (non-PIE, no sites): one hand-written function per relocation rule, and a region near them to run detours in.</summary>
    DetourRun,

    /// <summary>unmodified.c (PIE, no patch-site flag): 4 threads calling work() and malloc()/free() on command.</summary>
    Unmodified,

    /// <summary>parkreloc.c (no sites, PIE) with stepper.c beside it (stepper): a thread parked at a boundary of a relocated entry.</summary>
    ParkReloc,

    /// <summary>waiters.c built without patch sites (f is traced through a relocated entry).</summary>
    WaitersPlain,

    /// <summary>ipara.c with a patch site on leaf (a 5-NOP sled it records itself): callers that keep values in call-clobbered registers across it.</summary>
    IpaRa,

    /// <summary>ipara.c without any patch site: leaf is traced at its relocated entry.</summary>
    IpaRaPlain,

    /// <summary>ipara.c linked statically, without sites (launch with --relocate is refused).</summary>
    StaticPlain,

    /// <summary>DlThreads built without any patch site (program, libflav.so, libflav2.so): libraries traced at relocated entries after dlopen.</summary>
    DlThreadsPlain,

    /// <summary>patches/*.c built as live patches (gcc -shared -fPIC); Get returns seedfix.so, the others are beside it.</summary>
    Patches,
}

/// <summary>
/// Builds the C targets under tests/targets with gcc, once: outputs are cached under
/// tests/targets/build/ by a hash of sources, flags and compiler version.
/// </summary>
public static class TargetBuilder
{
    private static readonly Dictionary<Flavour, Lazy<string>> s_built = Enum.GetValues<Flavour>()
        .ToDictionary(f => f, f => new Lazy<string>(() => BuildUncached(f), LazyThreadSafetyMode.ExecutionAndPublication));

    private static readonly Lazy<string> s_compilerVersion = new(() => Run("gcc", "--version").Split('\n')[0]);

    public static string SourceDir { get; } = FindSourceDir();

    /// <summary>The path of the flavour's program (for <see cref="Flavour.SharedLibrary"/>, of uselib; libflav.so is beside it).</summary>
    public static string Get(Flavour flavour) => s_built[flavour].Value;

    public static string LibraryOf(string program) => Path.Combine(Path.GetDirectoryName(program)!, "libflav.so");

    private const string Nop5Flags = "-O2 -pg -mfentry -mnop-mcount -mrecord-mcount -fno-pie";
    private const string SledFlags = "-O2 -fpatchable-function-entry=5";

    private static readonly string[] PatchSources = ["seedfix", "serverfix", "serverfix2", "napfix", "bad_undefined", "bad_tls", "bad_ctor", "nothing", "polyfix"];

    /// <summary>A built live patch, by the name of its source in tests/targets/patches/.</summary>
    public static string Patch(string name) => Path.Combine(Path.GetDirectoryName(Get(Flavour.Patches))!, name + ".so");

    private static string BuildUncached(Flavour flavour)
    {
        (string[] sources, string[] steps, string output) = (Recipe)(flavour switch
        {
            Flavour.Nop5 => new Recipe(["flavours.c"], [$"gcc {Nop5Flags} -c {{src}}/flavours.c -o {{out}}/flavours.o", "gcc -no-pie {out}/flavours.o -o {out}/prog"], "prog"),
            Flavour.PatchablePie => new Recipe(["flavours.c"], [$"gcc {SledFlags} -fPIE -pie {{src}}/flavours.c -o {{out}}/prog"], "prog"),
            // Compiled with -pg, linked without it (no gprof start-up); __fentry__ resolves to glibc's.
            Flavour.FentryPie => new Recipe(["flavours.c"], ["gcc -O2 -pg -mfentry -mrecord-mcount -fPIE -c {src}/flavours.c -o {out}/flavours.o", "gcc -pie {out}/flavours.o -o {out}/prog"], "prog"),
            Flavour.Endbr => new Recipe(["flavours.c"], [$"gcc {SledFlags} -fcf-protection=full -fPIE -pie {{src}}/flavours.c -o {{out}}/prog"], "prog"),
            Flavour.EndbrNop5 => new Recipe(["flavours.c"], [$"gcc {Nop5Flags} -fcf-protection=full -c {{src}}/flavours.c -o {{out}}/flavours.o", "gcc -no-pie {out}/flavours.o -o {out}/prog"], "prog"),
            Flavour.Stripped => new Recipe(["flavours.c"], [$"gcc {Nop5Flags} -c {{src}}/flavours.c -o {{out}}/flavours.o", "gcc -no-pie {out}/flavours.o -o {out}/prog", "strip {out}/prog"], "prog"),
            Flavour.NoSites => new Recipe(["flavours.c"], ["gcc -O2 {src}/flavours.c -o {out}/prog"], "prog"),
            Flavour.SharedLibrary => new Recipe(["libflav.c", "uselib.c"],
                [$"gcc {SledFlags} -fPIC -shared {{src}}/libflav.c -o {{out}}/libflav.so",
                 "gcc -O2 {src}/uselib.c -L{out} -lflav -Wl,-rpath,'$ORIGIN' -o {out}/prog"], "prog"),
            Flavour.Cxx => new Recipe(["cxxprog.cpp"], [$"g++ {SledFlags} {{src}}/cxxprog.cpp -o {{out}}/prog"], "prog"),
            Flavour.Many => new Recipe(["gen-many.sh"],
                ["bash {src}/gen-many.sh 50000 > {out}/many.c", $"gcc -O1 -pthread -pg -mfentry -mnop-mcount -mrecord-mcount -fno-pie -c {{out}}/many.c -o {{out}}/many.o", "gcc -no-pie -pthread {out}/many.o -o {out}/prog", "rm -f {out}/many.c {out}/many.o"], "prog"),
            Flavour.Many10kPie => new Recipe(["gen-many.sh"],
                ["bash {src}/gen-many.sh 10000 > {out}/many.c", $"gcc -O1 -pthread {SledFlags} -fPIE -pie {{out}}/many.c -o {{out}}/prog", "rm -f {out}/many.c"], "prog"),
            Flavour.SeedNop5 => new Recipe(["seedcase.c"], [$"gcc {Nop5Flags} -pthread -c {{src}}/seedcase.c -o {{out}}/seedcase.o", "gcc -no-pie -pthread {out}/seedcase.o -o {out}/prog"], "prog"),
            Flavour.SeedSled => new Recipe(["seedcase.c"], [$"gcc {SledFlags} -pthread -fPIE -pie {{src}}/seedcase.c -o {{out}}/prog"], "prog"),
            // No sibling calls: the call tree in the source is the one at run time.
            Flavour.Calls => new Recipe(["calls.c"], [$"gcc {SledFlags} -fno-optimize-sibling-calls -pthread {{src}}/calls.c -o {{out}}/prog"], "prog"),
            Flavour.Graph => new Recipe(["graph.c"], [$"gcc {SledFlags} -fno-optimize-sibling-calls -pthread {{src}}/graph.c -o {{out}}/prog"], "prog"),
            Flavour.GraphCxx => new Recipe(["graphxx.cpp"], [$"g++ {SledFlags} -fno-optimize-sibling-calls {{src}}/graphxx.cpp -o {{out}}/prog"], "prog"),
            Flavour.PatchServer => new Recipe(["patchserver.c"], [$"gcc {SledFlags} -pthread {{src}}/patchserver.c -o {{out}}/prog"], "prog"),
            Flavour.IpaRa => new Recipe(["ipara.c"], ["gcc -O2 -pthread -DSITES {src}/ipara.c -o {out}/prog"], "prog"),
            Flavour.StaticPlain => new Recipe(["ipara.c"], ["gcc -O2 -static -pthread {src}/ipara.c -o {out}/prog"], "prog"),
            Flavour.IpaRaPlain => new Recipe(["ipara.c"], ["gcc -O2 -pthread {src}/ipara.c -o {out}/prog"], "prog"),
            Flavour.PatchServerPlain => new Recipe(["patchserver.c"], ["gcc -O2 -pthread {src}/patchserver.c -o {out}/prog"], "prog"),
            Flavour.Patches => new Recipe(
                [.. PatchSources.Select(p => $"patches/{p}.c")],
                [.. PatchSources.Select(p => $"gcc -O2 -shared -fPIC {{src}}/patches/{p}.c -o {{out}}/{p}.so")], "seedfix.so"),
            Flavour.Blocker => new Recipe(["blocker.c"], [$"gcc {SledFlags} -pthread {{src}}/blocker.c -o {{out}}/prog"], "prog"),
            Flavour.ManyThreads => new Recipe(["manythreads.c"], [$"gcc {SledFlags} -pthread {{src}}/manythreads.c -o {{out}}/prog"], "prog"),
            Flavour.Coroutine => new Recipe(["coroutine.c"], [$"gcc {SledFlags} -fno-optimize-sibling-calls {{src}}/coroutine.c -o {{out}}/prog"], "prog"),
            Flavour.Execer => new Recipe(["execer.c"], [$"gcc {SledFlags} -pthread {{src}}/execer.c -o {{out}}/prog"], "prog"),
            Flavour.Waiters => new Recipe(["waiters.c"], [$"gcc {SledFlags} -pthread {{src}}/waiters.c -o {{out}}/prog"], "prog"),
            Flavour.SigSled => new Recipe(["sigsled.c"], [$"gcc {SledFlags} -pthread {{src}}/sigsled.c -o {{out}}/prog"], "prog"),
            Flavour.DlOpener => new Recipe(["libflav.c", "dlopener.c"],
                [$"gcc {SledFlags} -fPIC -shared {{src}}/libflav.c -o {{out}}/libflav.so", "gcc -O2 {src}/dlopener.c -o {out}/prog"], "prog"),
            // libflav2.so: the same library under other names (lib2_*), for a dlclose then a dlopen at the same address.
            Flavour.DlThreads => new Recipe(["libflav.c", "dlthreads.c"],
                [$"gcc {SledFlags} -fPIC -shared {{src}}/libflav.c -o {{out}}/libflav.so",
                 $"gcc {SledFlags} -fPIC -shared -Dlib_add=lib2_add -Dlib_square=lib2_square -Dlib_poly=lib2_poly -Dlib_init=lib2_init -Dlib_sink=lib2_sink {{src}}/libflav.c -o {{out}}/libflav2.so",
                 $"gcc {SledFlags} -fno-optimize-sibling-calls -pthread {{src}}/dlthreads.c -o {{out}}/prog"], "prog"),
            Flavour.DlThreadsPlain => new Recipe(["libflav.c", "dlthreads.c"],
                ["gcc -O2 -fPIC -shared {src}/libflav.c -o {out}/libflav.so",
                 "gcc -O2 -fPIC -shared -Dlib_add=lib2_add -Dlib_square=lib2_square -Dlib_poly=lib2_poly -Dlib_init=lib2_init -Dlib_sink=lib2_sink {src}/libflav.c -o {out}/libflav2.so",
                 "gcc -O2 -pthread {src}/dlthreads.c -o {out}/prog"], "prog"),
            // graphxx.cpp as a library (its main renamed), loaded by a C program: the C++ runtime comes with it.
            Flavour.DlCxx => new Recipe(["graphxx.cpp", "dlxx.c"],
                [$"g++ {SledFlags} -fno-optimize-sibling-calls -fPIC -shared -Dmain=graphxx_main {{src}}/graphxx.cpp -o {{out}}/libgraphxx.so",
                 $"gcc {SledFlags} -fno-optimize-sibling-calls {{src}}/dlxx.c -o {{out}}/prog"], "prog"),
            Flavour.SigBlocked => new Recipe(["sigblocked.c"], [$"gcc {SledFlags} -pthread {{src}}/sigblocked.c -o {{out}}/prog"], "prog"),
            Flavour.Prefork => new Recipe(["prefork.c"], [$"gcc {SledFlags} {{src}}/prefork.c -o {{out}}/prog"], "prog"),
            Flavour.Forker => new Recipe(["forker.c"], [$"gcc {SledFlags} -pthread {{src}}/forker.c -o {{out}}/prog"], "prog"),
            Flavour.Metrics => new Recipe(["metrics.c"], [$"gcc {Nop5Flags} -pthread -c {{src}}/metrics.c -o {{out}}/metrics.o", "gcc -no-pie -pthread {out}/metrics.o -o {out}/prog"], "prog"),
            Flavour.Prologues => new Recipe(["prologues.c"],
                ["gcc -O2 -freorder-blocks-and-partition -Wl,--build-id {src}/prologues.c -o {out}/prog",
                 "objcopy --only-keep-debug {out}/prog {out}/prog.debug",
                 "strip --strip-all {out}/prog -o {out}/prog.stripped",
                 "strip --strip-all -R .eh_frame -R .eh_frame_hdr {out}/prog -o {out}/prog.bare",
                 "cp {out}/prog.stripped {out}/prog.linked && objcopy --add-gnu-debuglink={out}/prog.debug {out}/prog.linked"], "prog"),
            Flavour.DetourRun => new Recipe(["detourrun.c"], ["gcc -O2 -fno-pie -no-pie {src}/detourrun.c -o {out}/prog"], "prog"),
            Flavour.Unmodified => new Recipe(["unmodified.c"], ["gcc -O2 -pthread {src}/unmodified.c -o {out}/prog"], "prog"),
            Flavour.ParkReloc => new Recipe(["parkreloc.c", "stepper.c"],
                ["gcc -O2 -pthread {src}/parkreloc.c -o {out}/prog", "gcc -O2 {src}/stepper.c -o {out}/stepper"], "prog"),
            Flavour.WaitersPlain => new Recipe(["waiters.c"], ["gcc -O2 -pthread {src}/waiters.c -o {out}/prog"], "prog"),
            Flavour.Parked => new Recipe(["parked.c"], [$"gcc {SledFlags} -pthread {{src}}/parked.c -o {{out}}/prog"], "prog"),
            _ => throw new ArgumentOutOfRangeException(nameof(flavour)),
        });

        var key = new StringBuilder(s_compilerVersion.Value).Append('\n');
        foreach (string s in sources)
        {
            key.Append(File.ReadAllText(Path.Combine(SourceDir, s))).Append('\n');
        }
        key.AppendJoin('\n', steps);
        string hash = Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(key.ToString())))[..16];
        string dir = Path.Combine(SourceDir, "build", $"{flavour.ToString().ToLowerInvariant()}-{hash}");
        string result = Path.Combine(dir, output);
        if (File.Exists(result))
        {
            return result;
        }
        // Build beside, then rename: a half-built directory is never taken for a cached one.
        string temp = dir + ".tmp-" + Environment.ProcessId;
        Directory.CreateDirectory(temp);
        foreach (string step in steps)
        {
            Run("bash", "-c", step.Replace("{src}", SourceDir).Replace("{out}", temp));
        }
        try
        {
            Directory.Move(temp, dir);
        }
        catch (IOException) when (File.Exists(result))
        {
            Directory.Delete(temp, recursive: true); // another test process built it first
        }
        return result;
    }

    private sealed record Recipe(string[] Sources, string[] Steps, string Output)
    {
        public void Deconstruct(out string[] sources, out string[] steps, out string output)
            => (sources, steps, output) = (Sources, Steps, Output);
    }

    public static string Run(string file, params string[] args)
    {
        var psi = new ProcessStartInfo(file) { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (string a in args)
        {
            psi.ArgumentList.Add(a);
        }
        using Process p = Process.Start(psi) ?? throw new InvalidOperationException($"cannot start {file}");
        Task<string> stderr = p.StandardError.ReadToEndAsync();
        string stdout = p.StandardOutput.ReadToEnd();
        p.WaitForExit();
        if (p.ExitCode != 0)
        {
            throw new InvalidOperationException($"{file} {string.Join(' ', args)} failed ({p.ExitCode}): {stderr.Result}");
        }
        return stdout;
    }

    private static string FindSourceDir()
    {
        for (string? dir = AppContext.BaseDirectory; dir is not null; dir = Path.GetDirectoryName(dir))
        {
            string candidate = Path.Combine(dir, "tests", "targets");
            if (File.Exists(Path.Combine(candidate, "flavours.c")))
            {
                return candidate;
            }
        }
        throw new InvalidOperationException("tests/targets not found above " + AppContext.BaseDirectory);
    }
}
