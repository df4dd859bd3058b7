using Iced.Intel;
using static Iced.Intel.AssemblerRegisters;
using L = Hotwire.Agent.AgentLayout;
using N = Hotwire.Interop.SyscallNumbers;

namespace Hotwire.Agent;

/// <summary>Where each entry point of the generated agent code landed.</summary>
public sealed record AgentEntryPoints(ulong CloneStub, ulong AfterCloneSyscall, ulong SigtrapHandler, ulong Restorer, ulong SyscallInsn, byte[] Code, ulong AgentEntry = 0, ulong RestoreHolds = 0);

/// <summary>
/// The agent's machine code, generated with Iced for fixed addresses: the agent thread's command
/// loop, the batched poke protocol, the dead-man switch and the SIGTRAP handler. It calls no libc and
/// touches no TLS, so it runs in any process at any moment.
/// </summary>
public static class AgentCode
{
    private const int PR_SET_NAME = 15;
    private const int SIGTRAP = 5;
    private const int ProtRwx = 7;
    private const int EINTR = 4;
    private const int SpinAfterCommand = 20_000; // pause iterations, roughly 100-200 µs

    /// <param name="hdr">target address of the data region (the header)</param>
    /// <param name="codeBase">target address where this code is mapped</param>
    public static AgentEntryPoints Build(ulong hdr, ulong codeBase)
    {
        var a = new Assembler(64);
        Label cloneStub = a.CreateLabel(), afterClone = a.CreateLabel(), agentEntry = a.CreateLabel();
        Label handler = a.CreateLabel(), restorer = a.CreateLabel(), syscallInsn = a.CreateLabel();
        Label runBatch = a.CreateLabel(), restoreAll = a.CreateLabel();

        // clone stub: Hotwire single-steps the syscall in the stopped thread; the child goes to agentEntry.
        a.Label(ref cloneStub);
        a.syscall();
        a.Label(ref afterClone);
        a.test(rax, rax);
        a.jz(agentEntry);
        a.int3();

        // A bare syscall Hotwire can single-step for later injections.
        a.Label(ref syscallInsn);
        a.syscall();
        a.int3();

        EmitAgentMain(a, hdr, ref agentEntry, runBatch, restoreAll);
        EmitRunBatch(a, ref runBatch);
        Label restoreHolds = a.CreateLabel();
        EmitRestoreAll(a, ref restoreAll, runBatch, restoreHolds);
        EmitRestoreHolds(a, ref restoreHolds);
        EmitSigtrapHandler(a, hdr, ref handler);

        // sa_restorer: return from the signal frame.
        a.Label(ref restorer);
        a.mov(eax, N.rt_sigreturn);
        a.syscall();

        var stream = new MemoryStream();
        AssemblerResult result = a.Assemble(new StreamCodeWriter(stream), codeBase, BlockEncoderOptions.ReturnNewInstructionOffsets);
        return new AgentEntryPoints(
            result.GetLabelRIP(cloneStub),
            result.GetLabelRIP(afterClone),
            result.GetLabelRIP(handler),
            result.GetLabelRIP(restorer),
            result.GetLabelRIP(syscallInsn),
            stream.ToArray(),
            result.GetLabelRIP(agentEntry),
            result.GetLabelRIP(restoreHolds));
    }

    private static void Syscall(Assembler a, int number)
    {
        a.mov(eax, number);
        a.syscall();
    }

    // as the kernel's text_poke_sync: serialize every core running a thread of this process
    private static void Sync(Assembler a)
    {
        a.mov(edi, Sys.MEMBARRIER_CMD_PRIVATE_EXPEDITED_SYNC_CORE);
        a.xor(esi, esi);
        a.xor(edx, edx);
        Syscall(a, N.membarrier);
        a.@lock.inc(__qword_ptr[rbx + L.SyncCount]);
    }

    /// <summary>Registers: rbx = header for the thread's whole life; r12d = last command seq seen.</summary>
    private static void EmitAgentMain(Assembler a, ulong hdr, ref Label agentEntry, Label runBatch, Label restoreAll)
    {
        Label loop = a.CreateLabel(), haveCmd = a.CreateLabel(), done = a.CreateLabel(), exitThread = a.CreateLabel();
        Label notBatch = a.CreateLabel(), notRestore = a.CreateLabel(), notExit = a.CreateLabel(), notSyscall = a.CreateLabel(), notStore = a.CreateLabel();
        Label noSigRestore = a.CreateLabel(), deadMan = a.CreateLabel(), spin = a.CreateLabel(), sleep = a.CreateLabel();

        a.Label(ref agentEntry);
        a.mov(rbx, hdr);
        a.and(rsp, -16);
        a.mov(edi, PR_SET_NAME);
        a.lea(rsi, __[rbx + L.AgentName]);
        Syscall(a, N.prctl);
        Syscall(a, N.gettid);
        a.mov(__qword_ptr[rbx + L.AgentTid], rax);
        a.mov(r12d, __dword_ptr[rbx + L.CmdSeq]);
        a.mov(__dword_ptr[rbx + L.DoneSeq], r12d);
        a.mov(__qword_ptr[rbx + L.AgentState], 1);

        a.Label(ref loop);
        a.mov(eax, __dword_ptr[rbx + L.CmdSeq]);
        a.cmp(eax, r12d);
        a.jne(haveCmd);
        // Commands come in bursts (toggling an ops): poll briefly before sleeping, so that the next
        // one does not pay a futex wake-up. Only right after a command; idle, the agent sleeps.
        a.mov(ecx, __dword_ptr[rbx + L.SpinBudget]);
        a.mov(__dword_ptr[rbx + L.SpinBudget], 0);
        a.Label(ref spin);
        a.test(ecx, ecx);
        a.jz(sleep);
        a.pause();
        a.dec(ecx);
        a.mov(eax, __dword_ptr[rbx + L.CmdSeq]);
        a.cmp(eax, r12d);
        a.jne(haveCmd);
        a.jmp(spin);
        a.Label(ref sleep);
        WaitForCommand(a, r12d);
        a.mov(eax, __dword_ptr[rbx + L.CmdSeq]);
        a.cmp(eax, r12d);
        a.jne(haveCmd);
        PollHotwireGone(a);
        a.jle(loop);
        a.Label(ref deadMan);
        a.mov(__qword_ptr[rbx + L.DeadManFired], 1);
        a.call(restoreAll);
        EmitDiscardBuffers(a);
        a.jmp(exitThread);

        a.Label(ref haveCmd);
        a.mov(r12d, eax);
        a.mov(eax, __dword_ptr[rbx + L.Cmd]);

        a.cmp(eax, L.CmdBatch);
        a.jne(notBatch);
        a.mov(r13, __qword_ptr[rbx + L.BatchList]);
        a.mov(r14, __qword_ptr[rbx + L.BatchCount]);
        a.mov(r15, __qword_ptr[rbx + L.RangeList]);
        a.mov(rbp, __qword_ptr[rbx + L.RangeCount]);
        a.call(runBatch);
        a.mov(__dword_ptr[rbx + L.Result], eax);
        EmitApplyBases(a);
        a.jmp(done);

        a.Label(ref notBatch);
        a.cmp(eax, L.CmdRestoreAll);
        a.jne(notRestore);
        a.call(restoreAll);
        a.mov(__dword_ptr[rbx + L.Result], eax);
        a.jmp(done);

        a.Label(ref notRestore);
        a.cmp(eax, L.CmdExit);
        a.jne(notExit);
        a.cmp(__qword_ptr[rbx + L.ExitRestoresSigaction], 0);
        a.je(noSigRestore);
        a.mov(edi, SIGTRAP);
        a.lea(rsi, __[rbx + L.OldSigaction]);
        a.xor(edx, edx);
        a.mov(r10d, 8);
        Syscall(a, N.rt_sigaction);
        a.Label(ref noSigRestore);
        a.jmp(exitThread);

        a.Label(ref notExit);
        a.cmp(eax, L.CmdSyscall);
        a.jne(notSyscall);
        a.mov(rdi, __qword_ptr[rbx + L.SyscallArgs]);
        a.mov(rsi, __qword_ptr[rbx + L.SyscallArgs + 8]);
        a.mov(rdx, __qword_ptr[rbx + L.SyscallArgs + 16]);
        a.mov(r10, __qword_ptr[rbx + L.SyscallArgs + 24]);
        a.mov(r8, __qword_ptr[rbx + L.SyscallArgs + 32]);
        a.mov(r9, __qword_ptr[rbx + L.SyscallArgs + 40]);
        a.mov(rax, __qword_ptr[rbx + L.SyscallNr]);
        a.syscall();
        a.mov(__qword_ptr[rbx + L.SyscallResult], rax);
        a.mov(__dword_ptr[rbx + L.Result], 0);
        a.jmp(done);

        a.Label(ref notSyscall);
        a.cmp(eax, L.CmdStore);
        a.jne(notStore);
        a.mov(rdi, __qword_ptr[rbx + L.SyscallArgs]);
        a.mov(rsi, __qword_ptr[rbx + L.SyscallArgs + 8]);
        a.mov(__qword_ptr[rdi], rsi);          // atomic for other threads: one aligned store
        a.mov(__dword_ptr[rbx + L.Result], 0);
        a.jmp(done);

        a.Label(ref notStore);
        a.mov(__dword_ptr[rbx + L.Result], 0); // ping, or a stray continue

        a.Label(ref done);
        a.mov(__dword_ptr[rbx + L.DoneSeq], r12d);
        Wake(a, L.DoneSeq);
        a.mov(__dword_ptr[rbx + L.SpinBudget], SpinAfterCommand);
        a.jmp(loop);

        a.Label(ref exitThread);
        a.mov(rdi, __qword_ptr[rbx + L.Pidfd]);
        Syscall(a, N.close);
        a.mov(__qword_ptr[rbx + L.AgentState], 2);
        a.mov(__dword_ptr[rbx + L.DoneSeq], r12d);
        Wake(a, L.DoneSeq);
        a.xor(edi, edi);
        Syscall(a, N.exit);
        a.ud2();
    }

    /// <summary>
    /// After a batch that succeeded (eax = 0), the base entries Hotwire staged with it become the
    /// sites' bases (what restore and the dead-man switch put back). Done here, by the agent, in the
    /// same command: Hotwire dying at any moment leaves either the old bytes with the old bases or
    /// the new bytes with the new bases, never a live patch in place that a restore would undo.
    /// </summary>
    private static void EmitApplyBases(Assembler a)
    {
        Label loop = a.CreateLabel(), end = a.CreateLabel();
        a.test(eax, eax);
        a.jnz(end);
        a.mov(rsi, __qword_ptr[rbx + L.BaseList]);
        a.mov(rcx, __qword_ptr[rbx + L.BaseCount]);
        a.Label(ref loop);
        a.test(rcx, rcx);
        a.jz(end);
        a.mov(edx, __dword_ptr[rsi + L.BaseSiteIndex]);
        a.imul(rdx, rdx, L.SiteEntrySize);
        a.add(rdx, __qword_ptr[rbx + L.SiteTable]);
        a.mov(rax, __qword_ptr[rsi + L.BaseBytes]);
        a.mov(__qword_ptr[rdx + L.SiteOriginal], rax);
        a.mov(rax, __qword_ptr[rsi + L.BaseBytes + 8]);
        a.mov(__qword_ptr[rdx + L.SiteOriginal + 8], rax);
        a.mov(rax, __qword_ptr[rsi + L.BaseEmu]);
        a.mov(__qword_ptr[rdx + L.SiteBaseEmu], rax);
        a.add(rsi, L.BaseEntrySize);
        a.dec(rcx);
        a.jmp(loop);
        a.Label(ref end);
        a.mov(__qword_ptr[rbx + L.BaseCount], 0);
    }

    /// <summary>
    /// The dead-man switch gives the tracers' buffer pages back, as detach does: the mappings stay
    /// (a thread may still be writing a last event) but their memory goes back to the system.
    /// </summary>
    private static void EmitDiscardBuffers(Assembler a)
    {
        const int MADV_REMOVE = 9;
        Label loop = a.CreateLabel(), end = a.CreateLabel();
        a.xor(r13d, r13d);
        a.Label(ref loop);
        a.cmp(r13, __qword_ptr[rbx + L.DiscardCount]);
        a.jae(end);
        a.mov(rax, r13);
        a.shl(rax, 4);
        a.mov(rdi, __qword_ptr[rbx + rax + L.DiscardList]);
        a.mov(rsi, __qword_ptr[rbx + rax + L.DiscardList + 8]);
        a.mov(edx, MADV_REMOVE);
        Syscall(a, N.madvise);
        a.inc(r13);
        a.jmp(loop);
        a.Label(ref end);
    }

    // futex_wait(&cmd_seq, expected, 50 ms): woken by Hotwire's FUTEX_WAKE, or times out to check on Hotwire.
    private static void WaitForCommand(Assembler a, AssemblerRegister32 expected)
    {
        a.lea(rdi, __[rbx + L.CmdSeq]);
        a.xor(esi, esi);
        a.mov(edx, expected);
        a.lea(r10, __[rbx + L.WaitTimeout]);
        a.xor(r8d, r8d);
        a.xor(r9d, r9d);
        Syscall(a, N.futex);
    }

    // The dead-man switch: poll(pidfd on Hotwire, POLLIN, 0) is > 0 once Hotwire has died.
    private static void PollHotwireGone(Assembler a)
    {
        a.lea(rdi, __[rbx + L.PollFd]);
        a.mov(esi, 1);
        a.xor(edx, edx);
        Syscall(a, N.poll);
        a.cmp(rax, 0);
    }

    // for (rcx = 0; rcx < r14; rcx++) { rsi, rdx, rdi = entry, site, address; body } — body keeps rcx.
    private static void ForEachBatchEntry(Assembler a, Action body)
    {
        Label loop = a.CreateLabel(), done = a.CreateLabel();
        a.xor(ecx, ecx);
        a.Label(ref loop);
        a.cmp(rcx, r14);
        a.jae(done);
        EntryAndSite(a, rcx);
        body();
        a.inc(rcx);
        a.jmp(loop);
        a.Label(ref done);
    }

    private static void Wake(Assembler a, int field)
    {
        a.lea(rdi, __[rbx + field]);
        a.mov(esi, 1); // FUTEX_WAKE (shared: Hotwire waits on its own mapping of the same page)
        a.mov(edx, int.MaxValue);
        Syscall(a, N.futex);
    }

    /// <summary>
    /// As the kernel's text_poke_bp_batch: verify, make pages writable, int3 on every site, sync,
    /// tails, sync, heads, sync, restore page protections. In: r13 = batch list, r14 = count,
    /// r15 = ranges, rbp = range count; rbx = header. Out: eax = result.
    /// </summary>
    private static void EmitRunBatch(Assembler a, ref Label runBatch)
    {
        Label vDone = a.CreateLabel(), mismatch = a.CreateLabel();
        Label mpLoop = a.CreateLabel(), mpDone = a.CreateLabel(), mpFail = a.CreateLabel(), mpUndo = a.CreateLabel(), mpUndoDone = a.CreateLabel();
        Label backLoop = a.CreateLabel(), backDone = a.CreateLabel(), ret = a.CreateLabel();
        Label noPause = a.CreateLabel(), pauseLoop = a.CreateLabel(), resumed = a.CreateLabel(), abort = a.CreateLabel();

        a.Label(ref runBatch);
        a.push(r12);
        a.sub(rsp, 8);

        // verify: every site holds exactly the expected bytes, or nothing is written
        ForEachBatchEntry(a, () =>
        {
            Label cLoop = a.CreateLabel(), cOk = a.CreateLabel();
            a.movzx(r8d, __byte_ptr[rdx + L.SiteLen]);
            a.xor(r9d, r9d);
            a.Label(ref cLoop);
            a.cmp(r9, r8);
            a.jae(cOk);
            a.movzx(eax, __byte_ptr[rdi + r9]);
            a.cmp(al, __byte_ptr[rsi + r9 + L.BatchExpected]);
            a.jne(mismatch);
            a.inc(r9);
            a.jmp(cLoop);
            a.Label(ref cOk);
        });
        a.jmp(vDone);
        a.Label(ref mismatch);
        a.mov(__qword_ptr[rbx + L.FailedIndex], rcx);
        a.lea(eax, __[rcx + 1]);
        a.jmp(ret);
        a.Label(ref vDone);

        // pages writable (syscalls clobber rcx and r11: r12 counts)
        a.xor(r12d, r12d);
        a.Label(ref mpLoop);
        a.cmp(r12, rbp);
        a.jae(mpDone);
        a.mov(rax, r12);
        a.shl(rax, 4);
        a.mov(rdi, __qword_ptr[r15 + rax]);
        a.mov(esi, __dword_ptr[r15 + rax + 8]);
        a.mov(edx, ProtRwx);
        Syscall(a, N.mprotect);
        a.test(rax, rax);
        a.js(mpFail);
        a.inc(r12);
        a.jmp(mpLoop);
        a.Label(ref mpFail);
        a.mov(__qword_ptr[rsp], rax);
        a.Label(ref mpUndo);
        a.test(r12, r12);
        a.jz(mpUndoDone);
        a.dec(r12);
        RestoreRange(a);
        a.jmp(mpUndo);
        a.Label(ref mpUndoDone);
        a.mov(rax, __qword_ptr[rsp]);
        a.jmp(ret);
        a.Label(ref mpDone);

        // phase 1: publish the new instruction's emulation, then int3 on byte 0 (x86 keeps stores in order)
        ForEachBatchEntry(a, () =>
        {
            a.mov(rax, __qword_ptr[rsi + L.BatchEmu]);
            a.mov(__qword_ptr[rdx + L.SiteEmu], rax);
            a.mov(__byte_ptr[rdi], 0xcc);
        });
        Sync(a);

        // optional pause: Hotwire checks that no thread sits inside a NOP sled being converted
        a.cmp(__qword_ptr[rbx + L.PauseAfterPhase1], 0);
        a.je(noPause);
        a.mov(__qword_ptr[rbx + L.Paused], 1);
        a.Label(ref pauseLoop);
        a.mov(r12d, __dword_ptr[rsp + 8]);
        a.mov(__dword_ptr[rbx + L.DoneSeq], r12d);
        Wake(a, L.DoneSeq);
        WaitForCommand(a, r12d);
        a.mov(eax, __dword_ptr[rbx + L.CmdSeq]);
        a.cmp(eax, __dword_ptr[rsp + 8]);
        a.jne(resumed);
        PollHotwireGone(a);
        a.jle(pauseLoop);
        a.cmp(__qword_ptr[rbx + L.DeathFinishesBatch], 0); // test-only: the old behaviour, finish the batch
        a.je(abort); // Hotwire died: it may not have moved every thread out of the sleds
        a.mov(eax, __dword_ptr[rsp + 8]);
        a.Label(ref resumed);
        a.mov(__dword_ptr[rsp + 8], eax); // the caller's r12 (saved by push) becomes the continue seq
        a.mov(__qword_ptr[rbx + L.Paused], 0);
        a.Label(ref noPause);

        // phase 2: bytes 1..len-1
        ForEachBatchEntry(a, () =>
        {
            Label inner = a.CreateLabel(), next = a.CreateLabel();
            a.movzx(r8d, __byte_ptr[rdx + L.SiteLen]);
            a.mov(r9d, 1);
            a.Label(ref inner);
            a.cmp(r9, r8);
            a.jae(next);
            a.movzx(eax, __byte_ptr[rsi + r9 + L.BatchNew]);
            a.mov(__byte_ptr[rdi + r9], al);
            a.inc(r9);
            a.jmp(inner);
            a.Label(ref next);
        });
        Sync(a);

        // phase 3: byte 0; record what is installed
        ForEachBatchEntry(a, () =>
        {
            a.mov(rax, __qword_ptr[rsi + L.BatchNew]);
            a.mov(__byte_ptr[rdi], al);
            a.mov(__qword_ptr[rdx + L.SiteCurrent], rax);
            a.mov(rax, __qword_ptr[rsi + L.BatchNew + 8]);
            a.mov(__qword_ptr[rdx + L.SiteCurrent + 8], rax);
        });
        Sync(a);

        // page protections back
        RestoreRanges(a, backLoop, backDone);
        a.xor(eax, eax);
        a.jmp(ret);

        // Hotwire died during the pause, perhaps before it moved every thread out of the sleds:
        // writing the tails now could tear an instruction under a thread still between the NOPs
        // (verify/patch.pml, variant death-finishes-sled). No tail is written yet, so putting each
        // byte 0 back restores the old instructions; a trap delivered later finds no int3 and
        // re-executes. The sites keep their current state; the main loop's dead-man switch follows.
        a.Label(ref abort);
        a.mov(__qword_ptr[rbx + L.Paused], 0);
        ForEachBatchEntry(a, () =>
        {
            a.movzx(eax, __byte_ptr[rsi + L.BatchExpected]);
            a.mov(__byte_ptr[rdi], al);
        });
        Sync(a);
        RestoreRanges(a, a.CreateLabel(), a.CreateLabel());
        a.mov(eax, -EINTR); // nobody reads it: Hotwire is gone

        a.Label(ref ret);
        a.add(rsp, 8);
        a.pop(r12);
        a.ret();
    }

    // rsi = &batch[index], rdx = &site[batch.index], rdi = site address
    private static void EntryAndSite(Assembler a, AssemblerRegister64 index)
    {
        a.imul(rsi, index, L.BatchEntrySize);
        a.add(rsi, r13);
        a.mov(edx, __dword_ptr[rsi + L.BatchSiteIndex]);
        a.imul(rdx, rdx, L.SiteEntrySize);
        a.add(rdx, __qword_ptr[rbx + L.SiteTable]);
        a.mov(rdi, __qword_ptr[rdx + L.SiteAddress]);
    }

    // every range's protection back, last to first (r12 counts)
    private static void RestoreRanges(Assembler a, Label loop, Label done)
    {
        a.mov(r12, rbp);
        a.Label(ref loop);
        a.test(r12, r12);
        a.jz(done);
        a.dec(r12);
        RestoreRange(a);
        a.jmp(loop);
        a.Label(ref done);
    }

    // mprotect(range[r12].start, range[r12].len, range[r12].prot)
    private static void RestoreRange(Assembler a)
    {
        a.mov(rax, r12);
        a.shl(rax, 4);
        a.mov(rdi, __qword_ptr[r15 + rax]);
        a.mov(esi, __dword_ptr[r15 + rax + 8]);
        a.mov(edx, __dword_ptr[r15 + rax + 12]);
        Syscall(a, N.mprotect);
    }

    /// <summary>
    /// Puts the original bytes back on every site whose bytes are still what the agent installed
    /// (a site someone else has since taken is left alone), through the same protocol.
    /// </summary>
    private static void EmitRestoreAll(Assembler a, ref Label restoreAll, Label runBatch, Label restoreHolds)
    {
        Label loop = a.CreateLabel(), next = a.CreateLabel(), built = a.CreateLabel(), haveEmu = a.CreateLabel();
        Label compare = a.CreateLabel(), ours = a.CreateLabel();
        a.Label(ref restoreAll);
        EmitRestoreRendezvous(a);
        a.mov(rdi, rbx);
        a.call(restoreHolds);
        a.mov(r13, __qword_ptr[rbx + L.RestoreList]);
        a.mov(rsi, __qword_ptr[rbx + L.SiteTable]);
        a.mov(rsi, __qword_ptr[rsi - 8]);            // the table's count
        a.xor(r14d, r14d);
        a.xor(edx, edx);
        a.Label(ref loop);
        a.cmp(rdx, rsi);
        a.jae(built);
        a.mov(rdi, rdx);
        a.imul(rdi, rdi, L.SiteEntrySize);
        a.add(rdi, __qword_ptr[rbx + L.SiteTable]);
        Label differs = a.CreateLabel();
        a.mov(rax, __qword_ptr[rdi + L.SiteCurrent]);
        a.cmp(rax, __qword_ptr[rdi + L.SiteOriginal]);
        a.jne(differs);
        a.mov(rax, __qword_ptr[rdi + L.SiteCurrent + 8]);
        a.cmp(rax, __qword_ptr[rdi + L.SiteOriginal + 8]);
        a.je(next);
        a.Label(ref differs);
        // still ours? the live bytes against what we installed, byte by byte: never reads past the
        // site (it may end its mapping), and any length works (a shifted mask did not at 8)
        a.movzx(ecx, __byte_ptr[rdi + L.SiteLen]);
        a.mov(r8, __qword_ptr[rdi + L.SiteAddress]);
        a.xor(r9d, r9d);
        a.Label(ref compare);
        a.cmp(r9, rcx);
        a.jae(ours);
        a.movzx(r10d, __byte_ptr[r8 + r9]);
        a.cmp(r10b, __byte_ptr[rdi + r9 + L.SiteCurrent]);
        a.jne(next);
        a.inc(r9);
        a.jmp(compare);
        a.Label(ref ours);
        a.imul(r8, r14, L.BatchEntrySize);
        a.add(r8, r13);
        a.mov(__dword_ptr[r8 + L.BatchSiteIndex], edx);
        a.mov(rax, __qword_ptr[rdi + L.SiteCurrent]);
        a.mov(__qword_ptr[r8 + L.BatchExpected], rax);
        a.mov(rax, __qword_ptr[rdi + L.SiteCurrent + 8]);
        a.mov(__qword_ptr[r8 + L.BatchExpected + 8], rax);
        a.mov(rax, __qword_ptr[rdi + L.SiteOriginal]);
        a.mov(__qword_ptr[r8 + L.BatchNew], rax);
        a.mov(rax, __qword_ptr[rdi + L.SiteOriginal + 8]);
        a.mov(__qword_ptr[r8 + L.BatchNew + 8], rax);
        a.mov(rax, __qword_ptr[rdi + L.SiteBaseEmu]);  // a live patch's jmp stays: emulate it
        a.test(rax, rax);
        a.jnz(haveEmu);
        a.movzx(eax, __byte_ptr[rdi + L.SiteLen]);
        a.shl(eax, 4);
        a.lea(rax, __[rbx + rax + L.NopRecords]);
        a.Label(ref haveEmu);
        a.mov(__qword_ptr[r8 + L.BatchEmu], rax);
        a.inc(r14);
        a.Label(ref next);
        a.inc(rdx);
        a.jmp(loop);
        a.Label(ref built);
        a.mov(r15, __qword_ptr[rbx + L.AllRangeList]);
        a.mov(rbp, __qword_ptr[r15 - 8]);            // the list's count
        a.mov(__qword_ptr[rbx + L.PauseAfterPhase1], 0);
        a.jmp(runBatch); // tail call: its ret returns to our caller
    }

    /// <summary>
    /// The SIGTRAP handler (SA_SIGINFO): rdi = signo, rsi = siginfo, rdx = ucontext.
    /// For a trap at a known site whose byte 0 is still int3, emulate the newest instruction
    /// published for it (call → push return address and jump; jmp; nop → skip); if byte 0 is no
    /// longer int3 the batch finished before the signal arrived: re-execute. Anything else is not
    /// ours: chain to the previous disposition.
    /// Reads byte 0 before the record: the agent publishes the record before writing int3, so a
    /// handler that sees int3 sees a record at least as new (x86 does not reorder loads with loads).
    /// </summary>
    private static void EmitSigtrapHandler(Assembler a, ulong hdr, ref Label handler)
    {
        Label search = a.CreateLabel(), goLeft = a.CreateLabel(), found = a.CreateLabel(), chain = a.CreateLabel();
        Label stale = a.CreateLabel(), skip = a.CreateLabel(), doCall = a.CreateLabel(), doJmp = a.CreateLabel(), emulated = a.CreateLabel();
        Label notIgnored = a.CreateLabel(), jmpOld = a.CreateLabel();

        a.Label(ref handler);
        a.push(rdi);
        a.push(rsi);
        a.mov(r9, hdr);
        a.mov(r8, __qword_ptr[rdx + L.UcontextRip]);
        a.dec(r8);                                   // ip of the int3
        a.mov(r10, __qword_ptr[r9 + L.SiteTable]);
        a.xor(ecx, ecx);                             // lo
        a.mov(r11, __qword_ptr[r10 - 8]);            // hi: the table's count
        a.Label(ref search);
        a.cmp(rcx, r11);
        a.jae(chain);
        a.lea(rax, __[rcx + r11]);
        a.shr(rax, 1);
        a.mov(rdi, rax);
        a.imul(rdi, rdi, L.SiteEntrySize);
        a.add(rdi, r10);
        a.mov(rsi, __qword_ptr[rdi + L.SiteAddress]);
        a.cmp(r8, rsi);
        a.je(found);
        a.jb(goLeft);
        a.lea(rcx, __[rax + 1]);
        a.jmp(search);
        a.Label(ref goLeft);
        a.mov(r11, rax);
        a.jmp(search);

        a.Label(ref found);
        a.movzx(eax, __byte_ptr[r8]);
        a.cmp(al, 0xcc);
        a.jne(stale);
        a.mov(rax, __qword_ptr[rdi + L.SiteEmu]);
        a.test(rax, rax);
        a.jz(chain);
        a.cmp(__qword_ptr[r9 + L.Int3Mode], 0);
        a.jne(skip);
        a.movzx(ecx, __byte_ptr[rax + L.RecordKind]);
        a.movzx(esi, __byte_ptr[rax + L.RecordAdvance]);
        a.cmp(ecx, L.KindCall);
        a.je(doCall);
        a.cmp(ecx, L.KindJmp);
        a.je(doJmp);
        a.add(r8, rsi);                              // nop: skip it
        a.mov(__qword_ptr[rdx + L.UcontextRip], r8);
        a.jmp(emulated);
        a.Label(ref doCall);                         // as int3_emulate_call: push ip + len, jump
        a.mov(rcx, __qword_ptr[rdx + L.UcontextRsp]);
        a.sub(rcx, 8);
        a.add(r8, rsi);
        a.mov(__qword_ptr[rcx], r8);
        a.mov(__qword_ptr[rdx + L.UcontextRsp], rcx);
        a.Label(ref doJmp);
        a.mov(rcx, __qword_ptr[rax + L.RecordTarget]);
        a.mov(__qword_ptr[rdx + L.UcontextRip], rcx);
        a.jmp(emulated);
        a.Label(ref skip);                           // test-only: the pre-2019 behaviour, skip the instruction
        a.movzx(ecx, __byte_ptr[rdi + L.SiteLen]);
        a.add(r8, rcx);
        a.mov(__qword_ptr[rdx + L.UcontextRip], r8);
        a.Label(ref emulated);
        a.@lock.inc(__qword_ptr[r9 + L.TrapsEmulated]);
        a.pop(rsi);
        a.pop(rdi);
        a.ret();

        a.Label(ref stale);
        a.mov(__qword_ptr[rdx + L.UcontextRip], r8);
        a.@lock.inc(__qword_ptr[r9 + L.TrapsStale]);
        a.pop(rsi);
        a.pop(rdi);
        a.ret();

        a.Label(ref chain);
        a.@lock.inc(__qword_ptr[r9 + L.TrapsChained]);
        a.pop(rsi);
        a.pop(rdi);
        a.mov(rax, __qword_ptr[r9 + L.OldSigaction]);
        a.cmp(rax, 1);                               // SIG_IGN
        a.jne(notIgnored);
        a.ret();
        a.Label(ref notIgnored);
        a.test(rax, rax);
        a.jnz(jmpOld);
        // SIG_DFL: restore the default and raise again, so the process ends as it would have untraced
        a.mov(edi, SIGTRAP);
        a.lea(rsi, __[r9 + L.DefaultSigaction]);
        a.xor(edx, edx);
        a.mov(r10d, 8);
        Syscall(a, N.rt_sigaction);
        Syscall(a, N.getpid);
        a.mov(r8, rax);
        Syscall(a, N.gettid);
        a.mov(rsi, rax);
        a.mov(rdi, r8);
        a.mov(edx, SIGTRAP);
        Syscall(a, N.tgkill);
        a.ret();
        a.Label(ref jmpOld);
        a.jmp(rax);

    }

    private const int FutexWait = 0, FutexWake = 1, RendezvousWaits = 40; // × WaitTimeout (50 ms)

    /// <summary>
    /// The dynamic linker's rendezvous, hooked (docs/processes.md): _dl_debug_state's
    /// `ret` is replaced by a jmp here (one aligned word store, no int3: a thread that blocks
    /// SIGTRAP would be killed by one). Tells Hotwire and waits (<see cref="EmitNotifyAndWait"/>),
    /// then returns to _dl_debug_state's caller, as its `ret` would have.
    /// </summary>
    public static byte[] RendezvousStub(ulong at, ulong hdr, ulong rendezvous)
    {
        var a = new Assembler(64);
        EmitNotifyAndWait(a, hdr, rendezvous);
        a.ret();
        return Assemble(a, at);
    }

    /// <summary>
    /// A hold on a library's initialiser (its first 5 bytes replaced by a jmp here before any of its
    /// code ran): tells Hotwire and waits while Hotwire hooks the library's GOT and puts the bytes
    /// back; if they are not back (Hotwire gone or late), puts every hold's bytes back itself
    /// (<paramref name="restoreHolds"/>, the agent's routine). Then runs the initialiser.
    /// </summary>
    public static byte[] HoldStub(ulong at, ulong hdr, ulong init, ulong restoreHolds)
    {
        var a = new Assembler(64);
        Label back = a.CreateLabel(), initLit = a.CreateLabel(), restorerLit = a.CreateLabel();
        EmitNotifyAndWait(a, hdr, init, () =>
        {
            a.mov(rax, init);
            a.cmp(__byte_ptr[rax], 0xe9);
            a.jne(back);
            a.mov(rdi, hdr);
            a.call(__qword_ptr[restorerLit]);
            a.Label(ref back);
        });
        a.jmp(__qword_ptr[initLit]);
        a.Label(ref initLit);
        a.dq(init);
        a.Label(ref restorerLit);
        a.dq(restoreHolds);
        return Assemble(a, at);
    }

    private static byte[] Assemble(Assembler a, ulong at)
    {
        var stream = new MemoryStream();
        a.Assemble(new StreamCodeWriter(stream), at);
        return stream.ToArray();
    }

    /// <summary>
    /// Keeping every register and the flags: LastHit = <paramref name="hit"/>, ModSeq + 1 (a shared
    /// futex Hotwire's library thread waits on), then wait on ModAck until Hotwire has dealt with
    /// this hit — never for long: not once the dead-man switch fired or the agent is gone, and at
    /// most 2 s (counted in ModWaitsTimedOut). <paramref name="afterWait"/> runs before the
    /// registers come back (it may clobber the caller-saved ones).
    /// </summary>
    private static void EmitNotifyAndWait(Assembler a, ulong hdr, ulong hit, Action? afterWait = null)
    {
        Label wait = a.CreateLabel(), done = a.CreateLabel(), timedOut = a.CreateLabel();
        a.pushfq();
        foreach (AssemblerRegister64 r in s_saved)
        {
            a.push(r);
        }
        a.mov(r9, hdr);
        a.mov(rax, hit);
        a.mov(__qword_ptr[r9 + L.LastHit], rax);
        a.mov(eax, 1);
        a.@lock.xadd(__dword_ptr[r9 + L.ModSeq], eax);
        a.inc(eax);
        a.push(rax);                                 // [rsp + 8] = this hit's number
        a.push(RendezvousWaits);                     // [rsp] = waits left
        a.lea(rdi, __[r9 + L.ModSeq]);
        a.mov(esi, FutexWake);                       // shared: Hotwire waits on its own mapping
        a.mov(edx, int.MaxValue);
        Syscall(a, N.futex);
        a.Label(ref wait);
        a.mov(edx, __dword_ptr[r9 + L.ModAck]);
        a.mov(eax, edx);
        a.sub(eax, __dword_ptr[rsp + 8]);
        a.jns(done);                                 // ack - hit >= 0 (wrapping)
        a.cmp(__qword_ptr[r9 + L.DeadManFired], 0);
        a.jne(done);
        a.cmp(__qword_ptr[r9 + L.AgentState], 1);
        a.jne(done);
        a.dec(__qword_ptr[rsp]);
        a.js(timedOut);
        a.lea(rdi, __[r9 + L.ModAck]);
        a.mov(esi, FutexWait);
        a.lea(r10, __[r9 + L.WaitTimeout]);
        Syscall(a, N.futex);
        a.jmp(wait);
        a.Label(ref timedOut);
        a.@lock.inc(__qword_ptr[r9 + L.ModWaitsTimedOut]);
        a.Label(ref done);
        a.add(rsp, 16);
        afterWait?.Invoke();
        foreach (AssemblerRegister64 r in s_saved.Reverse())
        {
            a.pop(r);
        }
        a.popfq();
    }

    // What the wait and a routine it calls may change (syscalls clobber rcx and r11).
    private static readonly AssemblerRegister64[] s_saved = [rax, rcx, rdx, rsi, rdi, r8, r9, r10, r11];

    /// <summary>
    /// Every hold's 5 bytes back where our jmp still is (rdi = header): restore, the dead-man
    /// switch, and a thread whose hold Hotwire did not take away. Keeps rbx, rbp, r12-r15.
    /// </summary>
    private static void EmitRestoreHolds(Assembler a, ref Label restoreHolds)
    {
        Label loop = a.CreateLabel(), done = a.CreateLabel();
        a.Label(ref restoreHolds);
        a.push(r12);
        a.push(r13);
        a.push(r14);
        a.mov(r12, rdi);
        a.mov(r13, __qword_ptr[r12 + L.HoldCount]);
        a.Label(ref loop);
        a.test(r13, r13);
        a.jz(done);
        a.dec(r13);
        a.mov(r14, r13);
        a.shl(r14, 4);
        a.lea(r14, __[r12 + r14 + L.HoldTable]);
        a.mov(rdi, __qword_ptr[r14]);
        a.test(rdi, rdi);
        a.jz(loop);
        a.cmp(__byte_ptr[rdi], 0xe9);                 // our jmp is still there
        a.jne(loop);
        a.and(rdi, -4096);
        a.mov(esi, 8192);                             // the 5 bytes may cross a page
        a.mov(edx, ProtRwx);
        Syscall(a, N.mprotect);
        a.test(rax, rax);
        a.js(loop);
        a.mov(rdi, __qword_ptr[r14]);
        for (int i = 4; i >= 0; i--)                  // byte 0 last: the jmp stays whole until then
        {
            a.movzx(eax, __byte_ptr[r14 + 8 + i]);
            a.mov(__byte_ptr[rdi + i], al);
        }
        a.and(rdi, -4096);
        a.mov(esi, 8192);
        a.movzx(edx, __byte_ptr[r14 + 13]);
        Syscall(a, N.mprotect);
        a.jmp(loop);
        a.Label(ref done);
        a.pop(r14);
        a.pop(r13);
        a.pop(r12);
        a.ret();
    }

    /// <summary>
    /// The rendezvous' word back (restore, detach, the dead-man switch): one aligned store, as its
    /// hook was; a thread already in the stub returns from it as _dl_debug_state would have.
    /// </summary>
    private static void EmitRestoreRendezvous(Assembler a)
    {
        Label skip = a.CreateLabel();
        a.mov(rdi, __qword_ptr[rbx + L.RBrkAddr]);
        a.test(rdi, rdi);
        a.jz(skip);
        a.mov(rax, __qword_ptr[rdi]);
        a.cmp(rax, __qword_ptr[rbx + L.RBrkHooked]);
        a.jne(skip);                                 // not our jmp (never hooked, or restored)
        a.and(rdi, -4096);
        a.mov(esi, 4096);
        a.mov(edx, ProtRwx);
        Syscall(a, N.mprotect);
        a.test(rax, rax);
        a.js(skip);
        a.mov(rdi, __qword_ptr[rbx + L.RBrkAddr]);
        a.mov(rax, __qword_ptr[rbx + L.RBrkOriginal]);
        a.mov(__qword_ptr[rdi], rax);                // one aligned store: `ret` again
        Sync(a);
        a.mov(rdi, __qword_ptr[rbx + L.RBrkAddr]);
        a.and(rdi, -4096);
        a.mov(esi, 4096);
        a.mov(rdx, __qword_ptr[rbx + L.RBrkProt]);
        Syscall(a, N.mprotect);
        a.Label(ref skip);
    }
}
