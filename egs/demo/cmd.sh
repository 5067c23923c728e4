# Job launchers of the stages: ${train_cmd} for CPU jobs, ${cuda_cmd} for GPU jobs, both called as
#     <cmd> [--gpu N] [--mem M] [--num-threads T] [JOB=1:N] <log.JOB.log> <command> ... JOB ...
# cmd_backend=local runs the jobs on this machine (utils/run.pl);
# cmd_backend=slurm submits them with sbatch (utils/slurm.pl; sbatch arguments in conf/slurm.conf).
cmd_backend=local

case "${cmd_backend}" in
    local)
        export train_cmd="run.pl"
        export cuda_cmd="run.pl"
        ;;
    slurm)
        export train_cmd="slurm.pl --config conf/slurm.conf"
        export cuda_cmd="slurm.pl --config conf/slurm.conf"
        ;;
    *)
        echo "cmd.sh: unknown cmd_backend='${cmd_backend}'; set it to local or slurm in cmd.sh" >&2
        return 1 2>/dev/null || exit 1
        ;;
esac
