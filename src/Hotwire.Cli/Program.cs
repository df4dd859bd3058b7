using System.CommandLine;
using Hotwire.Cli;
using Hotwire.Cli.Commands;

var root = new RootCommand("Hotwire: trace and live-patch the functions of running x86-64 Linux processes.")
{
    LsCommand.Create(),
    DemoCommand.Create(),
    CountCommand.Create(),
    TopCommand.Create(),
    MetricsCommand.Create(),
    RecordCommand.Create(live: false),
    RecordCommand.Create(live: true),
    ReplayCommand.Create(),
    ReportCommand.Create(),
    GraphCommand.Create(),
    DumpCommand.Create(),
    PatchCommand.Create(),
};
return CommandRunner.Run(root, args);
