namespace Hotwire.Patching;

/// <summary>
/// The signal frames on a stopped thread's stacks: where each interrupted context resumes when its
/// handler returns. A thread parked in a handler (a GC's stop-the-world handler, a handler blocked
/// in a system call) resumes at its frame's saved PC, not at its current one, so code rewrites that
/// must move threads off instruction boundaries must move these PCs too.
/// </summary>
/// <remarks>
/// The kernel's x86-64 <c>struct rt_sigframe</c> is { pretcode; struct ucontext uc; siginfo_t info },
/// pretcode being the handler's return address: the sa_restorer, whose code is always
/// <c>mov $15, %rax|%eax; syscall</c> (rt_sigreturn, glibc's and musl's __restore_rt and ours alike).
/// The frame lies below the interrupted stack pointer (less the red zone), its FPU state just above
/// it, 64-byte aligned, and uc_mcontext.fpstate points there. A word on the stack is taken for a
/// frame only when all of that holds. Nested frames (a handler interrupted by another signal, or a
/// handler on a sigaltstack) are followed through each frame's saved stack pointer.
/// </remarks>
internal static class SignalFrames
{
    // Offsets from the frame's start (the pretcode word): uc at 8, uc_mcontext at uc + 40,
    // gregs in struct sigcontext order (r8..r15, rdi, rsi, rbp, rbx, rdx, rax, rcx, rsp, rip, ...).
    private const int Mcontext = 8 + 40;
    private const int RspOffset = Mcontext + 15 * 8;
    private const int RipOffset = Mcontext + 16 * 8;
    private const int FpStateOffset = Mcontext + 23 * 8;
    private const int SigNoOffset = 8 + 304;   // siginfo follows the 304-byte struct ucontext
    private const int FrameBytes = SigNoOffset + 4;
    // How far above a stack pointer frames are looked for. A handler's frame lies just above the
    // handler's own frames; adjacent thread stacks merge into one mapping (1,000 threads of 64 KiB:
    // one 64 MiB VMA), so the mapping's end is no bound: scanning to it cost 440 ms per thread.
    private const ulong MaxScan = 256UL << 10;

    /// <summary>One signal frame: its address, the context it resumes, and the signal that made it.</summary>
    public readonly record struct Frame(ulong Address, ulong Rip, ulong Rsp, int Signal)
    {
        /// <summary>Where the saved PC is stored: writing it changes where the handler returns.</summary>
        public ulong RipSlot => Address + RipOffset;
    }

    /// <summary>Every signal frame live on the stacks of a thread stopped with stack pointer <paramref name="sp"/>.</summary>
    public static List<Frame> Find(IMemoryReader memory, ulong sp, IReadOnlyList<MemoryMapping> maps)
    {
        var frames = new List<Frame>();
        var restorers = new Dictionary<ulong, bool>();
        var scanned = new HashSet<ulong>();
        var pending = new Stack<ulong>();
        pending.Push(sp);
        while (pending.Count > 0)
        {
            ulong from = pending.Pop() & ~7UL;
            MemoryMapping stack = MappingOf(maps, from);
            if (stack.End == 0 || !scanned.Add(from))
            {
                continue;
            }
            ulong length = Math.Min(stack.End - from, MaxScan);
            var words = new byte[length];
            if (!memory.TryRead(from, words))
            {
                continue;
            }
            for (int i = 0; i + FrameBytes <= words.Length; i += 8)
            {
                ulong pretcode = BitConverter.ToUInt64(words, i);
                if (!IsRestorer(memory, maps, pretcode, restorers))
                {
                    continue;
                }
                ulong at = from + (ulong)i;
                ulong fpstate = BitConverter.ToUInt64(words, i + FpStateOffset);
                if (fpstate != 0 && (fpstate <= at || fpstate - at > 64 * 1024 || (fpstate & 63) != 0))
                {
                    continue;
                }
                ulong rsp = BitConverter.ToUInt64(words, i + RspOffset);
                ulong rip = BitConverter.ToUInt64(words, i + RipOffset);
                bool sameStack = rsp >= stack.Start && rsp < stack.End;
                if (rsp == 0 || (sameStack && rsp <= at))
                {
                    continue;
                }
                frames.Add(new Frame(at, rip, rsp, BitConverter.ToInt32(words, i + SigNoOffset)));
                if (!sameStack)
                {
                    pending.Push(rsp); // the handler ran on another stack: the interrupted one may hold more frames
                }
            }
        }
        return frames;
    }

    // mov $15, %rax; syscall — or mov $15, %eax; syscall
    private static ReadOnlySpan<byte> RestoreRt64 => [0x48, 0xc7, 0xc0, 0x0f, 0x00, 0x00, 0x00, 0x0f, 0x05];

    private static ReadOnlySpan<byte> RestoreRt32 => [0xb8, 0x0f, 0x00, 0x00, 0x00, 0x0f, 0x05];

    private static bool IsRestorer(IMemoryReader memory, IReadOnlyList<MemoryMapping> maps, ulong address, Dictionary<ulong, bool> known)
    {
        if (address < 0x1000)
        {
            return false;
        }
        if (known.TryGetValue(address, out bool yes))
        {
            return yes;
        }
        yes = false;
        MemoryMapping m = MappingOf(maps, address);
        if (m.End != 0 && m.IsExecutable)
        {
            Span<byte> code = stackalloc byte[9];
            yes = memory.TryRead(address, code) && (code.SequenceEqual(RestoreRt64) || code[..7].SequenceEqual(RestoreRt32));
        }
        known[address] = yes;
        return yes;
    }

    private static MemoryMapping MappingOf(IReadOnlyList<MemoryMapping> maps, ulong address)
    {
        int lo = 0, hi = maps.Count - 1;
        while (lo <= hi)
        {
            int mid = (lo + hi) / 2;
            if (address < maps[mid].Start)
            {
                hi = mid - 1;
            }
            else if (address >= maps[mid].End)
            {
                lo = mid + 1;
            }
            else
            {
                return maps[mid];
            }
        }
        return default;
    }
}
