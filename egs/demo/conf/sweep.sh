# The demo as a target sweep (./run.sh --config conf/sweep.sh): the demo's setting (conf/demo.sh) for two
# parameter and two MACs targets, each in its own exp/demo_<budget><target> with its DistilHuBERT-style baseline
# of the same size, one stage 5 over the teacher and all of them, and exp/demo_sweep/PARETO.md + pareto.png.
# (make demo stays the single 0.75-parameter run of conf/demo.sh.) Rerunning it skips the finished targets; add
# targets with --targets "...".
. conf/demo.sh
targets="params:0.6 params:0.75 macs:0.6 macs:0.75"
tag=demo
sweep_tag=demo_sweep
