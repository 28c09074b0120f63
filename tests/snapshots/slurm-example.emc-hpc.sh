# on the mpi block: PARSL_MPI_PREFIX = srun --ntasks 8 --ntasks-per-node 8 --nodelist <block's nodes> --nodes 1 --mpi=pmix --overlap
$PARSL_MPI_PREFIX apptainer exec --bind /shared/data:/shared/data --bind /runs/example:/runs/example /shared/images/spibatch.sif python3 -m spibatch.stages emc /runs/example
