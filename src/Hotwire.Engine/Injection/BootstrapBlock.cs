using Iced.Intel;
using static Iced.Intel.AssemblerRegisters;
using L = Hotwire.Agent.AgentLayout;
using N = Hotwire.Interop.SyscallNumbers;

namespace Hotwire.Injection;

/// <summary>
/// The code the stopped thread runs by itself to set Hotwire up, so that ptrace holds it for one
/// injected system call only. Hotwire maps one block with that call, writes this code, the agent's
/// header and code and the thread's own registers into it, points the thread at it and detaches.
/// The thread then creates the memfd, fills and maps it at the addresses Hotwire chose, installs
/// the SIGTRAP handler, registers membarrier, opens a pidfd on Hotwire, starts the agent thread,
/// and puts every register back, jumping to where it was (restarting the system call it was in,
/// as the kernel would have). Hotwire dying at any moment after the detach leaves a thread that
/// finishes this and runs on; the agent then finds Hotwire gone (or never starts: pidfd_open of a
/// dead Hotwire fails and the block gives up before anything is installed).
/// </summary>
/// <remarks>
/// The code uses no stack until its epilogue (which uses its own), so a signal delivered while it
/// runs finds the thread's stack as it was. It touches no FPU or vector register. Failure at any
/// step undoes what was done (sigaction, mappings, fd) and reports the step and errno.
/// </remarks>
internal static class BootstrapBlock
{
    /// <summary>Where each part of the block lies, and the slots Hotwire fills or reads.</summary>
    public sealed record Layout(ulong Base, ulong Size, ulong Status, ulong Step, ulong Fd, ulong Tid, ulong Regions, ulong RegisterSlots, byte[] Code);

    /// <summary>A trampoline region: its size, its offset in the memfd, and the addresses to try, nearest first.</summary>
    public sealed record Region(ulong Size, ulong MemfdOffset, IReadOnlyList<ulong> Candidates);

    /// <param name="Header">the first <see cref="L.HeaderSize"/> bytes of the memfd (the agent's header)</param>
    /// <param name="AgentCode">the agent's code, written at <paramref name="DataSize"/> in the memfd</param>
    public sealed record Plan(ulong Base, int HotwirePid, ulong MemfdSize, ulong DataBase, ulong DataSize, ulong CodeBase, ulong CodeSize,
        byte[] Header, byte[] AgentCode, IReadOnlyList<Region> Regions, ulong AgentEntry, ulong AgentStackTop, ulong CloneFlags, bool StopWhenDone,
        int ReuseFd = -1)
    {
        /// <summary>An earlier block is taken over: memfd, mappings, header and code are in place already.</summary>
        public bool Reuse => ReuseFd >= 0;
    }

    // Registers in the order of the slots: what the epilogue loads (rsp and rip last).
    private static readonly AssemblerRegister64[] s_restored = [rax, rbx, rcx, rdx, rsi, rdi, rbp, r8, r9, r10, r11, r12, r13, r14, r15];
    private const int SlotEflags = 15, SlotRsp = 16, SlotRip = 17, Slots = 18;

    private const int SIG_SETMASK = 2;
    private const long EEXIST = 17;

    public static Layout Emit(Plan p)
    {
        var a = new Assembler(64);
        Label fail = a.CreateLabel(), epilogue = a.CreateLabel(), child = a.CreateLabel();
        Label status = a.CreateLabel(), step = a.CreateLabel(), fdSlot = a.CreateLabel(), tidSlot = a.CreateLabel();
        Label name = a.CreateLabel(), stackTop = a.CreateLabel();
        Label[] registers = Enumerable.Range(0, Slots).Select(_ => a.CreateLabel()).ToArray();
        Label[] regions = Enumerable.Range(0, Math.Max(p.Regions.Count, 1)).Select(_ => a.CreateLabel()).ToArray();
        Label header = a.CreateLabel(), agentCode = a.CreateLabel();

        // r12 = fd (or -1), r13 = what is mapped (bit 0 data, bit 1 code), r14 = 1 once our sigaction is in.
        a.mov(r12, -1L);
        a.xor(r13d, r13d);
        a.xor(r14d, r14d);

        void Step(int n) => a.mov(__qword_ptr[step], n);
        void Call(int number)
        {
            a.mov(eax, number);
            a.syscall();
        }
        void FailIfError()
        {
            a.cmp(rax, -4095);
            a.jae(fail);
        }
        void FailUnlessAt(ulong address, int bit)
        {
            Label ok = a.CreateLabel();
            FailIfError();
            a.mov(rcx, address);
            a.cmp(rax, rcx);
            a.je(ok);
            a.mov(rdi, rax);                                    // a kernel without MAP_FIXED_NOREPLACE placed it elsewhere
            a.mov(esi, 4096);
            Call(N.munmap);
            a.mov(rax, -EEXIST);
            a.jmp(fail);
            a.Label(ref ok);
            if (bit >= 0)
            {
                a.or(r13d, 1 << bit);
            }
        }

        if (p.Reuse)
        {
            a.mov(__qword_ptr[fdSlot], p.ReuseFd);              // r12 stays -1: a failure must not close it
        }
        else
        {
            Step(1);
            a.lea(rdi, __[name]);
            a.mov(esi, Sys.MFD_CLOEXEC);
            Call(N.memfd_create);
            FailIfError();
            a.mov(r12, rax);
            a.mov(__qword_ptr[fdSlot], rax);

            Step(2);
            a.mov(rdi, r12);
            a.mov(rsi, p.MemfdSize);
            Call(N.ftruncate);
            FailIfError();

            // The header and the agent's code go into the memfd before anything maps it.
            Step(3);
            a.mov(rdi, r12);
            a.lea(rsi, __[header]);
            a.mov(edx, L.HeaderSize);
            a.xor(r10d, r10d);
            Call(N.pwrite64);
            a.cmp(rax, L.HeaderSize);
            a.jne(fail);
            Step(4);
            a.mov(rdi, r12);
            a.lea(rsi, __[agentCode]);
            a.mov(edx, p.AgentCode.Length);
            a.mov(r10, p.DataSize);
            Call(N.pwrite64);
            a.cmp(rax, p.AgentCode.Length);
            a.jne(fail);

            Step(5);
            MapShared(a, p.DataBase, p.DataSize, Sys.PROT_READ | Sys.PROT_WRITE, 0);
            FailUnlessAt(p.DataBase, 0);
            a.mov(rcx, p.DataBase);
            a.mov(__qword_ptr[rcx + L.MemfdInTarget], r12);

            Step(6);
            MapShared(a, p.CodeBase, p.CodeSize, Sys.PROT_READ | Sys.PROT_EXEC, p.DataSize);
            FailUnlessAt(p.CodeBase, 1);

            // A trampoline region near each module: the first candidate address that is free.
            for (int i = 0; i < p.Regions.Count; i++)
            {
                Region r = p.Regions[i];
                Label found = a.CreateLabel();
                Step(100 + i);
                foreach (ulong at in r.Candidates)
                {
                    Label next = a.CreateLabel();
                    MapShared(a, at, r.Size, Sys.PROT_READ | Sys.PROT_EXEC, r.MemfdOffset);
                    a.mov(rcx, at);
                    a.cmp(rax, rcx);
                    a.je(found);
                    a.cmp(rax, -4095);
                    a.jae(next);
                    a.mov(rdi, rax);                                // placed elsewhere (no MAP_FIXED_NOREPLACE): give it back
                    a.mov(rsi, r.Size);
                    Call(N.munmap);
                    a.Label(ref next);
                }
                a.mov(rax, -12L);                                   // ENOMEM: no free address within a jmp's reach
                a.jmp(fail);
                a.Label(ref found);
                a.mov(__qword_ptr[regions[i]], rax);
            }
        }

        // pidfd on Hotwire: the agent's dead-man switch. A Hotwire already gone stops everything here.
        Step(7);
        a.mov(edi, p.HotwirePid);
        a.xor(esi, esi);
        Call(N.pidfd_open);
        FailIfError();
        a.mov(rcx, p.DataBase);
        a.mov(__qword_ptr[rcx + L.Pidfd], rax);
        a.mov(__dword_ptr[rcx + L.PollFd], eax);
        a.mov(__dword_ptr[rcx + L.PollFd + 4], 1);              // POLLIN

        // A reused block's handler may be the one installed (the same code at the same address):
        // then the disposition it chained to, carried over in the header, stays the one to chain to.
        Step(8);
        a.mov(edi, Ptrace.SIGTRAP);
        a.mov(rsi, p.DataBase + L.NewSigaction);
        a.mov(rdx, p.DataBase + (ulong)(p.Reuse ? L.SigScratch : L.OldSigaction));
        a.mov(r10d, 8);
        Call(N.rt_sigaction);
        FailIfError();
        a.mov(r14d, 1);
        if (p.Reuse)
        {
            Label ours = a.CreateLabel();
            a.mov(rcx, p.DataBase);
            a.mov(rax, __qword_ptr[rcx + L.SigScratch]);
            a.cmp(rax, __qword_ptr[rcx + L.NewSigaction]);
            a.je(ours);
            for (int i = 0; i < 32; i += 8)
            {
                a.mov(rax, __qword_ptr[rcx + L.SigScratch + i]);
                a.mov(__qword_ptr[rcx + L.OldSigaction + i], rax);
            }
            a.Label(ref ours);
        }

        Step(9);
        a.mov(edi, Sys.MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_SYNC_CORE);
        a.xor(esi, esi);
        a.xor(edx, edx);
        Call(N.membarrier);
        FailIfError();

        // The agent thread is born with every signal but SIGTRAP blocked: block them around clone.
        Step(10);
        a.mov(edi, SIG_SETMASK);
        a.mov(rsi, p.DataBase + L.AllSignals);
        a.mov(rdx, p.DataBase + L.SavedSigmask);
        a.mov(r10d, 8);
        Call(N.rt_sigprocmask);
        FailIfError();
        Step(11);
        a.mov(rdi, p.CloneFlags);
        a.mov(rsi, p.AgentStackTop);
        a.xor(edx, edx);
        a.xor(r10d, r10d);
        a.xor(r8d, r8d);
        Call(N.clone);
        a.test(rax, rax);
        a.jz(child);
        a.mov(r15, rax);
        a.mov(edi, SIG_SETMASK);
        a.mov(rsi, p.DataBase + L.SavedSigmask);
        a.xor(edx, edx);
        a.mov(r10d, 8);
        Call(N.rt_sigprocmask);
        a.mov(rax, r15);
        FailIfError();
        a.mov(__qword_ptr[tidSlot], rax);
        a.mov(__qword_ptr[status], 1);
        a.jmp(epilogue);

        a.Label(ref child);
        a.mov(rax, p.AgentEntry);
        a.jmp(rax);

        // Failure: report, then undo in reverse order.
        a.Label(ref fail);
        a.mov(__qword_ptr[status], rax);
        {
            Label noSigaction = a.CreateLabel(), noCode = a.CreateLabel(), noData = a.CreateLabel(), noFd = a.CreateLabel();
            a.test(r14d, r14d);
            a.jz(noSigaction);
            a.mov(edi, Ptrace.SIGTRAP);
            a.mov(rsi, p.DataBase + (ulong)(p.Reuse ? L.SigScratch : L.OldSigaction));
            a.xor(edx, edx);
            a.mov(r10d, 8);
            Call(N.rt_sigaction);
            a.Label(ref noSigaction);
            for (int i = 0; i < p.Regions.Count; i++)
            {
                Label skip = a.CreateLabel();
                a.mov(rdi, __qword_ptr[regions[i]]);
                a.test(rdi, rdi);
                a.jz(skip);
                a.mov(rsi, p.Regions[i].Size);
                Call(N.munmap);
                a.Label(ref skip);
            }
            a.test(r13d, 2);
            a.jz(noCode);
            a.mov(rdi, p.CodeBase);
            a.mov(rsi, p.CodeSize);
            Call(N.munmap);
            a.Label(ref noCode);
            a.test(r13d, 1);
            a.jz(noData);
            a.mov(rdi, p.DataBase);
            a.mov(rsi, p.DataSize);
            Call(N.munmap);
            a.Label(ref noData);
            a.test(r12, r12);
            a.js(noFd);
            a.mov(rdi, r12);
            Call(N.close);
            a.Label(ref noFd);
            a.nop();
        }

        a.Label(ref epilogue);
        if (p.StopWhenDone)
        {
            a.int3();                                           // launch mode: Hotwire holds the thread and puts its registers back
            a.ud2();
        }
        else
        {
            a.lea(rsp, __[stackTop]);
            a.push(__qword_ptr[registers[SlotEflags]]);
            a.popfq();
            for (int i = 0; i < s_restored.Length; i++)
            {
                a.mov(s_restored[i], __qword_ptr[registers[i]]);
            }
            a.mov(rsp, __qword_ptr[registers[SlotRsp]]);
            a.jmp(__qword_ptr[registers[SlotRip]]);
        }

        // Data the code reads and writes, after it.
        a.Label(ref status);
        a.dq(0);
        a.Label(ref step);
        a.dq(0);
        a.Label(ref fdSlot);
        a.dq(0);
        a.Label(ref tidSlot);
        a.dq(0);
        for (int i = 0; i < Slots; i++)
        {
            a.Label(ref registers[i]);
            a.dq(0);
        }
        for (int i = 0; i < regions.Length; i++)
        {
            a.Label(ref regions[i]);
            a.dq(0);
        }
        a.Label(ref name);
        a.db("hotwire\0"u8.ToArray());
        for (int i = 0; i < 32; i++)
        {
            a.dq(0);
        }
        a.Label(ref stackTop);
        a.dq(0);
        if (!p.Reuse)
        {
            a.Label(ref header);
            a.db(p.Header);
            a.Label(ref agentCode);
            a.db(p.AgentCode);
        }

        var stream = new MemoryStream();
        AssemblerResult result = a.Assemble(new StreamCodeWriter(stream), p.Base, BlockEncoderOptions.ReturnNewInstructionOffsets);
        byte[] code = stream.ToArray();
        return new Layout(p.Base, Align((ulong)code.Length, 4096),
            result.GetLabelRIP(status), result.GetLabelRIP(step), result.GetLabelRIP(fdSlot), result.GetLabelRIP(tidSlot),
            result.GetLabelRIP(regions[0]), result.GetLabelRIP(registers[0]), code);
    }

    /// <summary>
    /// The register slots' contents: the thread's registers as the kernel would resume it, the
    /// interrupted system call set up to be entered again (orig_rax ≥ 0 with -ERESTART* in rax).
    /// </summary>
    public static byte[] RegisterSlots(user_regs_struct r)
    {
        const long ERESTARTSYS = -512, ERESTARTNOINTR = -513, ERESTARTNOHAND = -514, ERESTART_RESTARTBLOCK = -516;
        const ulong NR_restart_syscall = 219;
        if ((long)r.orig_rax >= 0)
        {
            switch ((long)r.rax)
            {
                case ERESTARTSYS or ERESTARTNOINTR or ERESTARTNOHAND:
                    r.rax = r.orig_rax;
                    r.rip -= 2;
                    break;
                case ERESTART_RESTARTBLOCK:
                    r.rax = NR_restart_syscall;
                    r.rip -= 2;
                    break;
            }
        }
        ulong[] values = [r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rbp, r.r8, r.r9, r.r10, r.r11, r.r12, r.r13, r.r14, r.r15,
            r.eflags & ~0x100UL, r.rsp, r.rip];
        var bytes = new byte[Slots * 8];
        for (int i = 0; i < Slots; i++)
        {
            BitConverter.TryWriteBytes(bytes.AsSpan(i * 8), values[i]);
        }
        return bytes;
    }

    private static void MapShared(Assembler a, ulong at, ulong size, int prot, ulong offset)
    {
        a.mov(rdi, at);
        a.mov(rsi, size);
        a.mov(edx, prot);
        a.mov(r10d, Sys.MAP_SHARED | Sys.MAP_FIXED_NOREPLACE);
        a.mov(r8, r12);
        a.mov(r9, offset);
        a.mov(eax, N.mmap);
        a.syscall();
    }

    private static ulong Align(ulong value, ulong align) => (value + align - 1) & ~(align - 1);
}
