using L = Hotwire.Agent.AgentLayout;

namespace Hotwire.Agent;

/// <summary>
/// Hotwire's side of the agent's command loop: a command word and a sequence number in the shared
/// header, a FUTEX_WAKE, and a wait for the agent's done sequence. Whatever runs in the target on
/// Hotwire's behalf (a batch, a system call, an atomic store) goes through here. One command at a
/// time: callers share the session's lock.
/// </summary>
public sealed unsafe class AgentChannel(int pid, SharedRegion shared, object gate)
{
    public int Pid { get; } = pid;

    /// <summary>The agent thread, once it runs (0 before).</summary>
    public int AgentTid { get; internal set; }

    /// <summary>Posts <paramref name="command"/> (AgentLayout.Cmd*) and waits until the agent is done with it.</summary>
    public void Send(int command)
    {
        lock (gate)
        {
            uint seq = shared.ReadU32(L.CmdSeq) + 1;
            shared.WriteU32(L.Cmd, (uint)command);
            shared.WriteU32(L.CmdSeq, seq);
            Sys.FutexWake((uint*)(shared.Pointer + L.CmdSeq), 1);
            // Most commands take tens of microseconds: spin briefly on our own core before sleeping.
            var spin = System.Diagnostics.Stopwatch.StartNew();
            while (spin.ElapsedTicks < System.Diagnostics.Stopwatch.Frequency / 5000)
            {
                if (shared.ReadU32(L.DoneSeq) == seq)
                {
                    return;
                }
                Thread.SpinWait(20);
            }
            long started = Environment.TickCount64;
            while (true)
            {
                uint done = shared.ReadU32(L.DoneSeq);
                if (done == seq)
                {
                    return;
                }
                Sys.FutexWait((uint*)(shared.Pointer + L.DoneSeq), done, 20_000_000);
                if (shared.ReadU32(L.DoneSeq) == seq)
                {
                    return;
                }
                if (!ProcStat.IsAlive(Pid))
                {
                    throw new TargetExitedException(Pid, $"pid {Pid} exited while Hotwire was changing its code; nothing is left to restore");
                }
                if (shared.ReadU64(L.AgentState) == 2 || !Directory.Exists($"/proc/{Pid}/task/{AgentTid}"))
                {
                    throw new HotwireException($"Hotwire's agent thread in pid {Pid} is gone (the process may be exiting)");
                }
                if (Environment.TickCount64 - started > 30_000)
                {
                    throw new HotwireException($"Hotwire's agent in pid {Pid} did not answer within 30 s (is the process stopped?)");
                }
            }
        }
    }

    /// <summary>Makes the agent run one system call in the target and returns its raw result (−errno on failure).</summary>
    public long Syscall(long number, params ulong[] args)
    {
        lock (gate)
        {
            shared.WriteU64(L.SyscallNr, (ulong)number);
            for (int i = 0; i < 6; i++)
            {
                shared.WriteU64((ulong)(L.SyscallArgs + i * 8), i < args.Length ? args[i] : 0);
            }
            Send(L.CmdSyscall);
            return (long)shared.ReadU64(L.SyscallResult);
        }
    }

    /// <summary>
    /// Stores one aligned word in the target from the agent thread, so running threads read the
    /// old or the new value, never a mix (a GOT slot, say); a read-only page (RELRO) is made
    /// writable for the moment of the store.
    /// </summary>
    public void StoreWord(ulong address, ulong value)
    {
        if ((address & 7) != 0)
        {
            throw new ArgumentException("the word must be aligned", nameof(address));
        }
        lock (gate)
        {
            MemoryMapping map = ProcMaps.Read(Pid).FirstOrDefault(m => address >= m.Start && address < m.End);
            if (map.End == 0)
            {
                throw new HotwireException($"0x{address:x} is not mapped in pid {Pid}");
            }
            ulong page = address & ~4095UL;
            int prot = map.Protection;
            if ((prot & Sys.PROT_WRITE) == 0)
            {
                Errors.CheckInTarget(Syscall(SyscallNumbers.mprotect, page, 4096, (ulong)(prot | Sys.PROT_WRITE)), $"making 0x{page:x} writable", Pid);
            }
            shared.WriteU64(L.SyscallArgs, address);
            shared.WriteU64(L.SyscallArgs + 8, value);
            Send(L.CmdStore);
            if ((prot & Sys.PROT_WRITE) == 0)
            {
                Syscall(SyscallNumbers.mprotect, page, 4096, (ulong)prot);
            }
        }
    }
}
