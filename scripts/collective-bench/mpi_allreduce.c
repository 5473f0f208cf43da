// All-reduce of float32 on MPI_COMM_WORLD: mean time of 20-200 repetitions per message size (rank 0 prints).
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
int main(int argc,char**argv){MPI_Init(&argc,&argv);int r,n;MPI_Comm_rank(MPI_COMM_WORLD,&r);MPI_Comm_size(MPI_COMM_WORLD,&n);
long sizes[]={1<<10,1<<16,1<<20,1<<22,11<<20};
for(int s=0;s<5;s++){long c=sizes[s];float*b=malloc(c*4);for(long i=0;i<c;i++)b[i]=1;
 for(int w=0;w<3;w++)MPI_Allreduce(MPI_IN_PLACE,b,c,MPI_FLOAT,MPI_SUM,MPI_COMM_WORLD);
 int reps=c>(1<<20)?20:200;double t=MPI_Wtime();for(int i=0;i<reps;i++)MPI_Allreduce(MPI_IN_PLACE,b,c,MPI_FLOAT,MPI_SUM,MPI_COMM_WORLD);t=(MPI_Wtime()-t)/reps;
 if(r==0)printf("mpi allreduce %ld floats: %.3f ms, %.2f GB/s\n",c,t*1e3,c*4/t/1e9);free(b);}
MPI_Finalize();}
