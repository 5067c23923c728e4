# The demo as a target sweep (./run.sh --config conf/sweep.sh): the demo's setting (conf/demo.sh) for its
# parameter target (0.75, as make demo), a smaller one (0.84, about the size of macs:0.7) and two MACs targets,
# each in its own exp/demo_<budget><target> with its DistilHuBERT-style baseline of the same size where one can be
# that small (baseline=auto), one stage 5 (KS and PR) over the teacher, FBANK and all of them, and
# exp/demo_sweep/PARETO.md + pareto.png.
# (make demo stays the single run of conf/demo.sh.) Rerunning it skips the finished targets; add
# targets with --targets "...".
. conf/demo.sh
targets="params:0.75 params:0.84 macs:0.5 macs:0.7"
baseline=auto
superb_tasks="ks pr"  # the two tasks with the widest margins over FBANK; the four take twice as long
tag=demo
sweep_tag=demo_sweep
