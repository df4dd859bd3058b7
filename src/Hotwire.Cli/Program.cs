using System.CommandLine;
using Hotwire.Cli;
using Hotwire.Cli.Commands;

// Hotwire's own helper, started beside a tracing session (ForkGuard.cs): not a command.
if (args.Length > 0 && args[0] == ForkGuard.Command)
{
    return ForkGuard.Run(args);
}

// First, before anything else can take time: from here on Ctrl-C and SIGTERM get Hotwire's own
// handling (a message and exit status 130), not the default action that ends it without a word.
StopSignals.Install();

Command record = RecordCommand.Create(live: false);
Command live = RecordCommand.Create(live: true);
Command count = CountCommand.Create();
Command top = TopCommand.Create();
Command metrics = MetricsCommand.Create();
var root = new RootCommand("Hotwire: trace and live-patch the functions of running x86-64 Linux processes.")
{
    LsCommand.Create(),
    DemoCommand.Create(),
    count,
    top,
    metrics,
    record,
    live,
    ReplayCommand.Create(),
    ReportCommand.Create(),
    GraphCommand.Create(),
    DumpCommand.Create(),
    PatchCommand.Create(),
};
// These claim the signals (StopSignals.Claim) and check for one before they attach; every other
// command lets a signal end it, as a C tool would.
return CommandRunner.Run(root, args, handlesSignals: new HashSet<Command> { record, live, count, top, metrics });
