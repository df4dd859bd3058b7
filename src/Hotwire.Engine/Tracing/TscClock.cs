using Iced.Intel;
using static Iced.Intel.AssemblerRegisters;

namespace Hotwire.Tracing;

/// <summary>A (TSC, CLOCK_MONOTONIC) pair taken back to back.</summary>
public readonly record struct ClockSample(ulong Tsc, long MonotonicNs);

/// <summary>
/// Reads the TSC from this process (a 16-byte function generated with Iced, called through a
/// function pointer) and pairs it with CLOCK_MONOTONIC, so event timestamps taken with rdtsc in
/// the target convert to monotonic time. The TSC is invariant and shared by all cores on every
/// x86-64 machine Linux runs this on (constant_tsc, nonstop_tsc).
/// </summary>
public static unsafe class TscClock
{
    private static readonly delegate* unmanaged<ulong> s_rdtsc = Build();

    public static ClockSample Sample()
    {
        // Take the pair whose TSC reads bracket the clock read most tightly.
        ClockSample best = default;
        ulong bestWidth = ulong.MaxValue;
        for (int i = 0; i < 5; i++)
        {
            ulong a = s_rdtsc();
            long mono = MonotonicNs();
            ulong b = s_rdtsc();
            if (b - a < bestWidth)
            {
                bestWidth = b - a;
                best = new ClockSample(a + (b - a) / 2, mono);
            }
        }
        return best;
    }

    public static long MonotonicNs()
    {
        long* ts = stackalloc long[2];
        Sys.clock_gettime(1 /* CLOCK_MONOTONIC */, ts);
        return ts[0] * 1_000_000_000 + ts[1];
    }


    private static delegate* unmanaged<ulong> Build()
    {
        var a = new Assembler(64);
        a.rdtsc();
        a.shl(rdx, 32);
        a.or(rax, rdx);
        a.ret();
        var stream = new MemoryStream();
        a.Assemble(new StreamCodeWriter(stream), 0);
        byte[] code = stream.ToArray();
        nint page = Sys.mmap(0, 4096, Sys.PROT_READ | Sys.PROT_WRITE, Sys.MAP_PRIVATE | Sys.MAP_ANONYMOUS, -1, 0);
        if (page == -1)
        {
            throw new HotwireException("cannot map memory for the TSC reader");
        }
        Marshal.Copy(code, 0, page, code.Length);
        if (Sys.mprotect(page, 4096, Sys.PROT_READ | Sys.PROT_EXEC) != 0)
        {
            throw new HotwireException("cannot make the TSC reader executable");
        }
        return (delegate* unmanaged<ulong>)page;
    }
}

/// <summary>Linear TSC → monotonic conversion from two samples.</summary>
public sealed record ClockCalibration(ClockSample Start, ClockSample End)
{
    public double TscPerNs => End.Tsc > Start.Tsc && End.MonotonicNs > Start.MonotonicNs
        ? (double)(End.Tsc - Start.Tsc) / (End.MonotonicNs - Start.MonotonicNs)
        : 1.0;

    /// <summary>A duration in TSC ticks, in ns.</summary>
    public long TicksToNs(ulong ticks) => (long)(ticks / TscPerNs);

    public long ToMonotonicNs(ulong tsc) => Start.MonotonicNs + (long)(((double)(long)(tsc - Start.Tsc)) / TscPerNs);
}
