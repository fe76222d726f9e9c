from peft_bench.cli import entry

entry()
