namespace Hotwire.Agent;

/// <summary>
/// The layout of the shared memfd: a data region mapped RW in both Hotwire and the target, followed
/// by code regions mapped R-X in the target (RW in Hotwire, which writes the code). The agent code
/// (generated in <see cref="AgentCode"/>) and Hotwire agree on these offsets; nothing else does.
/// </summary>
public static class AgentLayout
{
    public const ulong Magic = 0x3145524957544f48; // "HOTWIRE1"

    // ---- header, at the start of the data region ----
    public const int CmdSeq = 0x08;          // u32, Hotwire increments; agent futex-waits on it
    public const int DoneSeq = 0x0c;         // u32, agent sets to the seq it finished; Hotwire futex-waits on it
    public const int Cmd = 0x10;             // u32
    public const int Result = 0x14;          // i32: 0 ok, < 0 -errno, > 0 index+1 of a verify failure
    public const int Pidfd = 0x18;           // agent's pidfd on Hotwire (the dead-man switch)
    public const int BatchCount = 0x20;
    public const int RangeCount = 0x28;
    public const int SyncCount = 0x30;       // membarrier(SYNC_CORE) calls made
    public const int TrapsEmulated = 0x38;
    public const int TrapsStale = 0x40;
    public const int TrapsChained = 0x48;
    public const int Int3Mode = 0x50;        // 0 emulate, 1 skip (test-only: the pre-2019 bug)
    public const int SiteCount = 0x58;
    public const int SiteTable = 0x60;       // pointers are target addresses; a table's entry count is the u64 before it
                                             // (one store switches table and count: the table grows with dlopen)
    public const int BatchList = 0x68;
    public const int RangeList = 0x70;
    public const int AgentState = 0x78;      // 0 starting, 1 running, 2 exited
    public const int OldSigaction = 0x80;    // struct kernel_sigaction (32 bytes): the handler we chain to
    public const int AllRangeCount = 0xa0;
    public const int AllRangeList = 0xa8;    // its count is also the u64 before the list
    public const int ExitRestoresSigaction = 0xb0;
    public const int AgentTid = 0xb8;
    public const int RestoreList = 0xc0;
    public const int PauseAfterPhase1 = 0xc8;
    public const int Paused = 0xd0;
    public const int SyscallNr = 0xd8;
    public const int SyscallArgs = 0xe0;     // 6 × u64
    public const int SyscallResult = 0x110;
    public const int DeadManFired = 0x118;
    public const int MemfdInTarget = 0x120;
    public const int FailedIndex = 0x128;
    public const int SpinBudget = 0x130;     // u32: pause iterations the agent polls before sleeping
    public const int OwnerPid = 0x138;       // pid of the Hotwire that injected this agent
    public const int BaseCount = 0x140;      // base updates the agent applies when the next batch succeeds
    public const int BaseList = 0x148;       // pointer to BaseCount base entries
    public const int DiscardCount = 0x150;   // ranges whose pages the dead-man switch gives back (MADV_REMOVE)
    public const int DeathFinishesBatch = 0x158; // test-only, 1: Hotwire gone during a pause, the batch is finished (the bug verify/ found)
    // The block (data, code, trampoline regions, bootstrap area), described for a later Hotwire that reuses it.
    public const int BlockVersion = 0x160;   // BlockLayoutVersion once the description is complete
    public const int BlockDataSize = 0x168;
    public const int BlockTotal = 0x170;     // bytes of the memfd
    public const int BlockCodeBase = 0x178;  // target address of the main code (the agent's), after the data
    public const int AgentName = 0x180;      // "hotwire-agent\0"
    public const int BlockBootArea = 0x190;  // the bootstrap's anonymous mapping: address, size
    public const int BlockBootSize = 0x198;
    public const int Pinned = 0x1a0;         // nonzero: the block's code stays in use (GOT slots still point at a graph tracer's unwind hooks)
    public const int RegionCount = 0x1a8;
    public const int ShadowMap = 0x1b0;      // a graph tracer's shadow stacks (private mapping): address, size, first record
    public const int ShadowMapSize = 0x1b8;
    public const int ShadowRecords = 0x1c0;
    // The dynamic linker's debugger rendezvous (_dl_debug_state, r_debug.r_brk), which it calls
    // around every dlopen/dlclose: its `ret` is replaced by a jmp to a stub that tells Hotwire and
    // waits (bounded) until Hotwire has traced the new libraries, before the call returns.
    public const int RBrkAddr = 0x1c8;       // the aligned word holding the hook; 0: not hooked
    public const int RBrkHooked = 0x1d0;     // that word with the jmp in it
    public const int RBrkOriginal = 0x1d8;   // that word as it was
    public const int RBrkProt = 0x1e0;       // the page's protection, put back after restoring the word
    public const int ModSeq = 0x1e8;         // u32: rendezvous and hold hits; Hotwire futex-waits on it
    public const int ModAck = 0x1ec;         // u32: the last hit Hotwire has dealt with; the hitting thread futex-waits on it
    public const int ModWaitsTimedOut = 0x1f0; // hits whose thread stopped waiting for Hotwire (2 s)
    public const int LastHit = 0x1f8;        // address of the latest rendezvous or hold hit
    // Holds: jmps over the first 5 bytes of the initialisers of libraries just loaded (before any of
    // their code ran), taken once the dynamic linker has relocated them (GOT slots can be hooked then).
    public const int HoldCount = 0x290;
    public const int HoldTable = 0x298;      // HoldMax × {u64 address, 5 original bytes, u8 page protection}
    public const int HoldEntrySize = 16;
    public const int HoldMax = 6;
    public const int NewSigaction = 0x200;   // 32 bytes
    public const int DefaultSigaction = 0x220;
    public const int WaitTimeout = 0x240;    // struct timespec
    public const int PollFd = 0x250;         // struct pollfd
    public const int AllSignals = 0x260;     // sigset_t (8 bytes, kernel size)
    public const int SavedSigmask = 0x268;
    public const int SigScratch = 0x270;     // 32 bytes: the disposition the bootstrap's rt_sigaction replaced
    public const int NopRecords = 0x300;     // 16 records of 16 bytes: "nop, advance L" for L = 0..15
    public const int DiscardList = 0x400;    // DiscardMax × {u64 target address, u64 length}
    public const int DiscardMax = 32;
    public const int RegionTable = 0x600;    // RegionMax × {module start, target address, size, memfd offset, used}
    public const int RegionEntrySize = 40;
    public const int RegionModuleStart = 0;
    public const int RegionAddress = 8;
    public const int RegionSize = 16;
    public const int RegionMemfdOffset = 24;
    public const int RegionUsed = 32;      // the high-water mark: a later Hotwire poisons up to it
    public const int RegionMax = 32;
    public const int HeaderSize = 0x1000;
    public const ulong BlockLayoutVersion = 5;

    // ---- commands ----
    public const int CmdBatch = 1;
    public const int CmdRestoreAll = 2;
    public const int CmdExit = 3;
    public const int CmdPing = 4;
    public const int CmdSyscall = 5;
    public const int CmdContinue = 6;
    public const int CmdStore = 7;           // one aligned 8-byte store: [SyscallArgs] = SyscallArgs[1]

    // ---- site table entry (sorted by address; the SIGTRAP handler binary-searches it) ----
    // Site bytes are 16 bytes (SiteBytes: zero-padded past len, len ≤ 16) wherever they are stored.
    public const int SiteEntrySize = 64;
    public const int SiteAddress = 0;
    public const int SiteEmu = 8;            // pointer to the emulation record of the newest instruction
    public const int SiteOriginal = 16;      // 16 bytes: what restore puts back (the base)
    public const int SiteCurrent = 32;       // 16 bytes: what the agent last installed
    public const int SiteLen = 48;           // u8
    public const int SiteBaseEmu = 56;       // emulation record of SiteOriginal when it is not a NOP (a live patch's jmp); 0: NOP
    // ---- base entry: what restore puts back on a site, changed with the batch that changes the site ----
    public const int BaseEntrySize = 32;
    public const int BaseSiteIndex = 0;      // u32
    public const int BaseBytes = 8;          // 16 bytes → SiteOriginal
    public const int BaseEmu = 24;           // u64 → SiteBaseEmu
    // ---- batch entry ----
    public const int BatchEntrySize = 48;
    public const int BatchSiteIndex = 0;     // u32
    public const int BatchExpected = 8;      // 16 bytes
    public const int BatchNew = 24;          // 16 bytes
    public const int BatchEmu = 40;          // pointer to emulation record

    // ---- emulation record (immutable once published) ----
    public const int RecordSize = 16;
    public const int RecordKind = 0;         // u8
    public const int RecordAdvance = 1;      // u8: nop → bytes to skip; call → return address offset
    public const int RecordTarget = 8;       // u64
    public const byte KindNop = 1;
    public const byte KindCall = 2;
    public const byte KindJmp = 3;

    // ---- range entry (pages made writable for a batch) ----
    public const int RangeEntrySize = 16;

    // ---- struct ucontext_t (x86-64): uc_mcontext.gregs at 40; REG_RSP = 15, REG_RIP = 16 ----
    public const int UcontextRsp = 40 + 15 * 8;
    public const int UcontextRip = 40 + 16 * 8;

    // ---- rt_sigaction flags ----
    public const ulong SA_SIGINFO = 0x4;
    public const ulong SA_ONSTACK = 0x08000000;
    public const ulong SA_RESTART = 0x10000000;
    public const ulong SA_RESTORER = 0x04000000;

    public const int AgentStackSize = 64 * 1024;
}
