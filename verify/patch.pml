/*
 * Hotwire's patch protocol (text_poke_bp in user space), model-checked with SPIN.
 * docs/verify.md explains the model; verify/run checks every variant.
 *
 * One patch site, NTHREADS application threads that keep calling the function whose entry is
 * the site, the agent thread (AgentCode.cs: EmitRunBatch, EmitRestoreAll, EmitSigtrapHandler),
 * Hotwire itself (Session.Apply, MoveThreadsOutOfSleds, detach) and a killer that may SIGKILL
 * Hotwire at any moment (the agent's dead-man switch then restores the site).
 *
 * Scenario (-D, one of):
 *   SCEN_SEED   NOP5 -> call A -> call B -> NOP5 (detach). The seed's call->call case.
 *   SCEN_PATCH  NOP5 -> jmp new (a live patch; the site's base becomes the jmp)
 *               -> call R (tracer whose trampoline redirects) -> jmp new (detach keeps the patch).
 *   SCEN_SLED   5 x 1-byte NOP sled -> call A (one-time conversion in a running process: pause
 *               after the int3s, threads and signal frames moved past the sled) -> call B -> sled.
 *   SCEN_RELOC  relocated prologue (DESIGN.md 2b, not implemented yet: modelled as designed)
 *               -> jmp detour (pause after the int3s for quiescence) -> prologue.
 * Broken variants (negative controls, each must yield a counterexample):
 *   SKIP_EMULATE      the handler skips the instruction (pre-2019 kernel; --int3=skip)
 *   NO_SYNC1          no membarrier after the int3s
 *   NO_SYNC2          no membarrier after the tails
 *   NO_SYNC3          no membarrier after the heads
 *   NO_MIGRATE        sled conversion without moving threads out of the sled
 *   NO_SIGFRAME       threads' PCs are moved, PCs saved in signal frames are not (SkipSignalFrameSleds)
 *   NO_QUIESCE        relocated entry installed without quiescence
 *   BASE_LATE         (SCEN_PATCH) Hotwire changes the site's base itself after the batch
 *                     instead of the agent in the same command (EmitApplyBases)
 *   DEATH_FINISHES    Hotwire dies during the pause: the agent writes the tails anyway (what
 *                     AgentCode.cs did until this model found it; HOTWIRE_TEST_DEATH_FINISHES_BATCH
 *                     keeps that behaviour for KillTests); now it puts byte 0 back and syncs
 *
 * ---- The memory model for instruction fetch (cross-modifying code) ----
 * Intel SDM vol. 3A 8.1.3 "Handling Self- and Cross-Modifying Code": processors "exhibit
 * model-specific behavior when executing cross-modifying code, depending upon how far ahead of
 * the executing processor's current execution pointer the code has been modified". The only
 * sequence it blesses: the modifier stores the code and then a flag; the executing processor
 * waits for the flag, executes a serializing instruction (CPUID), then runs the new code. So
 * until it serializes, a core may run stale bytes, new bytes, or (the errata on "unsynchronized
 * XMC" say it plainly: unexpected or unpredictable execution) a mix within one instruction.
 * The SDM says nothing about a one-byte int3; the kernel's text_poke_bp (arch/x86/kernel/
 * alternative.c: "add a int3 trap to the address that will be patched - sync cores - update all
 * but the first byte of the patched range - sync cores - replace the first byte (int3) by the
 * first byte of replacing opcode - sync cores") relies on one more rule that is not in the SDM's
 * text (the kernel takes it as given by the vendors): a core fetching a byte that another core
 * overwrites with int3 sees the old byte or int3, nothing else. Its "sync cores" is an IPI that
 * makes every core execute a serializing instruction. The model assumes exactly this, no more.
 * membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED_SYNC_CORE) is the user-space "sync cores": when
 * it returns, every thread of the process has executed a core-serializing instruction, or will
 * before it next runs user code.
 * The model is therefore deliberately pessimistic: for each location (byte 0, and bytes 1..4
 * taken together as "the tail") each thread has a view = the set of values the location held
 * since the last sync that passed that thread; an instruction fetch may return ANY value in the
 * view (not necessarily the newest, and an older one after a newer one), and a tail fetched while
 * its view holds two values may be a byte-wise mix of them (T_MIX). A sync sets every view to the
 * location's current value. A sync acts at instruction boundaries (IPIs are taken there), so a
 * whole instruction's fetch is one atomic step; choosing from the views at the end of a fetch
 * covers every split fetch because views only grow between syncs. Data loads (the SIGTRAP
 * handler reading byte 0 and the record) are coherent and TSO-ordered: they see current memory.
 */

#ifndef NTHREADS
#define NTHREADS 2
#endif

#if !defined(SCEN_SEED) && !defined(SCEN_PATCH) && !defined(SCEN_SLED) && !defined(SCEN_RELOC)
#define SCEN_SEED
#endif

/* ---- bytes, abstractly ---- */
/* byte 0 */
#define H_INT3 0   /* cc */
#define H_NOP1 1   /* 90: the first of five 1-byte NOPs */
#define H_NOPL 2   /* 0f: nopl 0x0(%rax,%rax,1), 0f 1f 44 00 00 */
#define H_CALL 3   /* e8 */
#define H_JMP  4   /* e9 */
#define H_PUSH 5   /* 55: push %rbp, a prologue's first instruction */
/* a version of the site = (byte 0, tail); its number is also the number of its tail */
#define V_SLED 0   /* 90 | 90 90 90 90 */
#define V_NOP5 1   /* 0f | 1f 44 00 00 */
#define V_A    2   /* e8 | rel32 to trampoline A (tracer) */
#define V_B    3   /* e8 | rel32 to trampoline B (tracers A and C) */
#define V_R    4   /* e8 | rel32 to trampoline R (tracer + redirect to the new function) */
#define V_NEW  5   /* e9 | rel32 to the new function (a live patch alone) */
#define V_DET  6   /* e9 | rel32 to the detour (trampoline call, relocated prologue, jmp back) */
#define V_PRO  7   /* 55 | 48 89 e5 ...: the rest of the relocated prologue */
#define T_MIX  8   /* a tail fetched as a byte-wise mix of two tails */
#define NOVER  9

#define headOf(v) ((v) == V_SLED -> H_NOP1 : ((v) == V_NOP5 -> H_NOPL : \
                   ((v) == V_A || (v) == V_B || (v) == V_R -> H_CALL : \
                   ((v) == V_NEW || (v) == V_DET -> H_JMP : H_PUSH))))

/* what an entry does: the effect of executing (or emulating) the version */
#define E_NOP 0    /* untraced; the old body follows */
#define E_A   1
#define E_B   2
#define E_R   3    /* traced, then the new body */
#define E_NEW 4    /* the new body */
#define E_DET 5    /* traced in the detour, relocated prologue, old body */
#define effOf(v) ((v) == V_A -> E_A : ((v) == V_B -> E_B : ((v) == V_R -> E_R : \
                  ((v) == V_NEW -> E_NEW : ((v) == V_DET -> E_DET : E_NOP)))))
#define oldBody(e) ((e) == E_NOP || (e) == E_A || (e) == E_B || (e) == E_DET)
#define bit(x) (1 << (x))

/* thread program counters */
#define P_ENTRY 0  /* at the site's byte 0 */
#define P_MID   1  /* at an interior boundary: between the sled's NOPs, or between prologue insns */
#define P_TRAP  2  /* executed int3: SIGTRAP pending, rip = ip + 1 */
#define P_H2    3  /* in the SIGTRAP handler: byte 0 read as int3, about to read the record */
#define P_APP   4  /* in an application signal handler; saved PC in sig[t] */
#define S_NONE  255

/* ---- scenarios: the batches Hotwire sends ---- */
#if defined(SCEN_SEED)
#define ORIG V_NOP5
#define NB 3
#define INIT_BATCHES bto[0] = V_A; bto[1] = V_B; bto[2] = V_NOP5
#elif defined(SCEN_PATCH)
#define ORIG V_NOP5
#define NB 3
#define INIT_BATCHES bto[0] = V_NEW; bto[1] = V_R; bto[2] = V_NEW
#define BASE_AFTER_0 V_NEW   /* bases travel with the batch (EmitApplyBases) */
#elif defined(SCEN_SLED)
#define ORIG V_SLED
#define NB 3
#define INIT_BATCHES bto[0] = V_A; bto[1] = V_B; bto[2] = V_SLED
#define PAUSE_0          /* first batch pauses after the int3s: MoveThreadsOutOfSleds */
#define HAS_MID
#else
#define ORIG V_PRO
#define NB 2
#define INIT_BATCHES bto[0] = V_DET; bto[1] = V_PRO
#define PAUSE_0          /* first batch pauses after the int3s: quiescence */
#define HAS_MID
#endif

#ifdef PAUSE_0
#define PAUSED0 1
#else
#define PAUSED0 0
#endif
#if NTHREADS == 2
#define noTrapPending (pc[0] != P_TRAP && pc[1] != P_TRAP)
#elif NTHREADS == 3
#define noTrapPending (pc[0] != P_TRAP && pc[1] != P_TRAP && pc[2] != P_TRAP)
#else
#define noTrapPending (pc[0] != P_TRAP)
#endif

byte bto[NB];

/* memory */
byte head = headOf(ORIG);
byte tail = ORIG;
byte cur = ORIG;          /* SiteCurrent */
byte base = ORIG;         /* SiteOriginal / SiteBaseEmu: what restore puts back */
byte emu = ORIG;          /* SiteEmu: the newest published emulation record (a version) */

/* per-thread fetch views (bit sets) */
byte vh[NTHREADS];
short vt[NTHREADS];
byte pc[NTHREADS];
byte sig[NTHREADS];
/* per-thread: versions / effects that were "the state" at some time during the current entry,
   from its first fetch to its end; 0 between entries */
short okV[NTHREADS];
byte okE[NTHREADS];
short allowedV = bit(ORIG);
byte allowedE = bit(E_NOP);

/* Hotwire <-> agent */
byte cmd = 255;           /* index of the batch Hotwire sent */
byte done = 255;          /* index of the batch the agent finished */
bool paused, cont;
bool dead;                /* Hotwire was SIGKILLed */
bool finished;            /* Hotwire detached cleanly */
bool reported;            /* a redirect was reported in place */
bool installed = 1;       /* our SIGTRAP disposition */
bool agentGone;

/* ---- atomic pieces of the agent ---- */
inline widen(v1, v2) {    /* the state is now v1 or v2 (a batch is in flight) */
  allowedV = bit(v1) | bit(v2);
  allowedE = bit(effOf(v1)) | bit(effOf(v2));
  i = 0;
  do :: i < NTHREADS ->
        if :: okV[i] != 0 -> okV[i] = okV[i] | allowedV; okE[i] = okE[i] | allowedE
           :: else -> skip fi;
        i++
     :: else -> break od
}
inline narrow(v) { allowedV = bit(v); allowedE = bit(effOf(v)) }

inline writeHead(h) {
  head = h; i = 0;
  do :: i < NTHREADS -> vh[i] = vh[i] | bit(h); i++ :: else -> break od
}
inline writeTail(t) {
  tail = t; i = 0;
  do :: i < NTHREADS -> vt[i] = vt[i] | bit(t); i++ :: else -> break od
}
/* membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED_SYNC_CORE): AgentCode.Sync */
inline sync() {
  i = 0;
  do :: i < NTHREADS -> vh[i] = bit(head); vt[i] = bit(tail); i++ :: else -> break od
}

/* EmitRunBatch. from -> to, emulation record rec, pause after phase 1 if pz. ok = 0 if aborted */
inline runBatch(to, rec, pz) {
  from = cur;
  /* verify: the site holds the expected bytes (always ours here; the mismatch path writes nothing) */
  assert(head == headOf(from) && tail == from);
  d_step { widen(from, to) };
  /* phase 1: publish the emulation record, then int3 on byte 0 (stores stay in order) */
  emu = rec;
  d_step { writeHead(H_INT3) };
#ifndef NO_SYNC1
  d_step { sync() };
#endif
  ok = 1;
  if
  :: pz ->
     paused = 1;
     /* the pause loop: a command from Hotwire, or Hotwire is gone (pidfd poll) */
     if
     :: cont -> skip
     :: dead && !cont ->
#ifdef DEATH_FINISHES
        skip    /* finish the batch; the main loop restores after */
#else
        /* abort: no tail was written, so putting byte 0 back is the old instruction again */
        d_step { writeHead(headOf(from)) };
        d_step { sync() };
        d_step { narrow(from) };
        ok = 0
#endif
     fi;
     paused = 0; cont = 0
  :: else -> skip
  fi;
  if
  :: ok ->
     /* phase 2: bytes 1..len-1 */
     d_step { writeTail(to) };
#ifndef NO_SYNC2
     d_step { sync() };
#endif
     /* phase 3: byte 0; record what is installed */
     d_step { writeHead(headOf(to)); cur = to };
#ifndef NO_SYNC3
     d_step { sync() };
#endif
     d_step { narrow(to) }
  :: else -> skip
  fi
}

proctype Agent() {
  byte i, k, from, rec;
  bool ok, not_restored;
  /* the command loop: futex wait on cmd_seq, 50 ms timeout, pidfd poll */
  do
  :: atomic { cmd != 255 && cmd != done -> k = cmd }
     rec = bto[k];
     runBatch(bto[k], rec, (k == 0 && PAUSED0));
#if defined(BASE_AFTER_0) && !defined(BASE_LATE)
     /* EmitApplyBases: after a batch that succeeded, in the same command */
     if :: ok && k == 0 -> base = BASE_AFTER_0 :: else -> skip fi;
#endif
     done = k
  :: dead ->
     /* the dead-man switch: EmitRestoreAll, through the same protocol, emulating the base */
     if
     :: cur != base -> rec = base; runBatch(base, rec, 0)
     :: else -> skip
     fi;
     break
  :: finished -> break
  od;
  /* after detach or death, the bytes equal the base (the original, or a live patch's jmp) */
  not_restored = !(head == headOf(base) && tail == base && cur == base);
  assert(!not_restored);
  agentGone = 1
}

/* an entry ends with effect e: the call is not lost, and a reported redirect is never bypassed */
inline finishEntry(e) {
  old_body_after_redirect = reported && oldBody(e); assert(!old_body_after_redirect);
  call_lost = !(okE[t] & bit(e)); assert(!call_lost);
  call_lost = 0; old_body_after_redirect = 0;
  okV[t] = 0; okE[t] = 0;               /* the entry is over */
  pc[t] = P_ENTRY
}

proctype Thread(byte t) {
  byte h, tl, e;
  /* the properties, named so that a counterexample says which one broke */
  bool torn, call_lost, old_body_after_redirect, trap_kills_process;
  do
  :: atomic { pc[t] == P_ENTRY ->
       if :: okV[t] == 0 -> okV[t] = allowedV; okE[t] = allowedE   /* a new entry starts */
          :: else -> skip fi;                                        /* (or a trap re-executes) */
       /* fetch the instruction at byte 0 */
       if
       :: vh[t] & bit(H_INT3) -> h = H_INT3
       :: vh[t] & bit(H_NOP1) -> h = H_NOP1
       :: vh[t] & bit(H_NOPL) -> h = H_NOPL
       :: vh[t] & bit(H_CALL) -> h = H_CALL
       :: vh[t] & bit(H_JMP)  -> h = H_JMP
       :: vh[t] & bit(H_PUSH) -> h = H_PUSH
       fi;
       if
       :: h == H_INT3 -> pc[t] = P_TRAP        /* SIGTRAP pending; delivery may come late */
       :: h == H_NOP1 || h == H_PUSH ->        /* a one-byte instruction: to the interior boundary */
          torn = !(okV[t] & (bit(V_SLED) | bit(V_PRO))); assert(!torn);
          old_body_after_redirect = reported; assert(!old_body_after_redirect);
          pc[t] = P_MID
       :: else ->                              /* a 5-byte instruction: fetch the tail too */
          if
          :: vt[t] & bit(V_SLED) -> tl = V_SLED
          :: vt[t] & bit(V_NOP5) -> tl = V_NOP5
          :: vt[t] & bit(V_A)    -> tl = V_A
          :: vt[t] & bit(V_B)    -> tl = V_B
          :: vt[t] & bit(V_R)    -> tl = V_R
          :: vt[t] & bit(V_NEW)  -> tl = V_NEW
          :: vt[t] & bit(V_DET)  -> tl = V_DET
          :: vt[t] & bit(V_PRO)  -> tl = V_PRO
          :: (vt[t] & (vt[t] - 1)) != 0 -> tl = T_MIX
          fi;
          /* no torn instruction: the bytes are one of the versions that were the state */
          torn = !(tl != T_MIX && headOf(tl) == h && (okV[t] & bit(tl))); assert(!torn);
          e = effOf(tl);
          finishEntry(e)
       fi;
       h = 0; tl = 0; e = 0 }
#ifdef HAS_MID
  :: atomic { pc[t] == P_MID ->
       /* the next instruction starts inside bytes 1..4: they must still be the sled's / prologue's */
       if
       :: vt[t] & bit(V_SLED) -> tl = V_SLED
       :: vt[t] & bit(V_NOP5) -> tl = V_NOP5
       :: vt[t] & bit(V_A)    -> tl = V_A
       :: vt[t] & bit(V_B)    -> tl = V_B
       :: vt[t] & bit(V_R)    -> tl = V_R
       :: vt[t] & bit(V_NEW)  -> tl = V_NEW
       :: vt[t] & bit(V_DET)  -> tl = V_DET
       :: vt[t] & bit(V_PRO)  -> tl = V_PRO
       :: (vt[t] & (vt[t] - 1)) != 0 -> tl = T_MIX
       fi;
       /* else: executing the middle of another instruction */
       torn = !(tl == V_SLED || tl == V_PRO); assert(!torn);
       finishEntry(E_NOP);
       tl = 0 }
  :: atomic { pc[t] == P_MID && sig[t] == S_NONE ->
       /* an application signal interrupts the thread here; its frame saves this PC */
       sig[t] = P_MID; pc[t] = P_APP }
  :: atomic { pc[t] == P_APP -> pc[t] = sig[t]; sig[t] = S_NONE }   /* sigreturn */
#endif
  :: atomic { pc[t] == P_TRAP ->
       /* SIGTRAP delivered (possibly long after the batch): EmitSigtrapHandler */
       trap_kills_process = !installed; assert(!trap_kills_process);   /* SIG_DFL: core dump */
       if
       :: head == H_INT3 -> pc[t] = P_H2        /* reads byte 0 before the record */
       :: else -> pc[t] = P_ENTRY               /* stale trap: rip = ip, re-execute */
       fi }
  :: atomic { pc[t] == P_H2 ->
#ifdef SKIP_EMULATE
       e = E_NOP;                               /* rip = ip + len: the instruction is skipped */
#else
       e = effOf(emu);                          /* call: push ip+len, jump; jmp; nop: skip;
                                                   the prologue: jump to the detour's relocated copy */
#endif
       finishEntry(e);
       e = 0 }
  od
}

proctype Hotwire() {
  byte k, t;
  for (k : 0 .. NB - 1) {
    atomic { if :: dead -> goto gone :: else -> cmd = k fi }
#ifdef PAUSE_0
    if
    :: k == 0 ->
       atomic { (paused || dead); if :: dead -> goto gone :: else -> skip fi }
       for (t : 0 .. NTHREADS - 1) {
#if defined(SCEN_SLED)
         /* MoveThreadsOutOfSleds: stop the thread, move its PC past the sled (unless its
            SIGTRAP from our int3 is pending: that is left for the handler), then the PCs saved
            in its signal frames; one thread at a time */
         atomic {
           if :: dead -> goto gone :: else -> skip fi;
#ifndef NO_MIGRATE
           if :: pc[t] == P_MID -> okV[t] = 0; okE[t] = 0; pc[t] = P_ENTRY
              :: else -> skip fi;
#ifndef NO_SIGFRAME
           if :: sig[t] == P_MID -> sig[t] = P_ENTRY :: else -> skip fi
#endif
#endif
         }
#else
         /* quiescence: each thread observed once outside the interior boundaries, its saved
            signal-frame PCs included (/proc/PID/task/TID/syscall for blocked threads) */
#ifndef NO_QUIESCE
         atomic { (dead || (pc[t] != P_MID && sig[t] != P_MID));
                  if :: dead -> goto gone :: else -> skip fi }
#else
         skip
#endif
#endif
       }
       atomic { if :: dead -> goto gone :: else -> cont = 1 fi }
    :: else -> skip
    fi;
#endif
    atomic { (done == k || dead); if :: dead -> goto gone :: else -> skip fi }
#ifdef SCEN_PATCH
    if :: k == 0 -> atomic { if :: dead -> goto gone :: else -> reported = 1 fi }
#ifdef BASE_LATE
                    /* the base changed by Hotwire after the batch, not by the agent within it */
                    atomic { if :: dead -> goto gone :: else -> base = BASE_AFTER_0 fi }
#endif
       :: else -> skip fi;
#endif
  }
  /* detach: wait until no thread has a SIGTRAP pending, then the old disposition goes back */
  atomic { (dead || noTrapPending);
           if :: dead -> goto gone :: else -> installed = 0; finished = 1 fi }
gone:
  skip
}

proctype Killer() {
  dead = 1                /* SIGKILL of Hotwire, at any moment */
}

init {
  byte i;
  atomic {
    INIT_BATCHES;
    i = 0;
    do
    :: i < NTHREADS ->
       vh[i] = bit(head); vt[i] = bit(tail); pc[i] = P_ENTRY; sig[i] = S_NONE;
       okV[i] = 0; okE[i] = 0;
       run Thread(i); i++
    :: else -> break
    od;
    run Agent(); run Hotwire(); run Killer()
  }
}
