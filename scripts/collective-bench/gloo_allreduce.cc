// All-reduce of float32 between <size> processes with gloo (TCP on 127.0.0.1, a file store at <dir>): gloo_allreduce <rank> <size> <dir>.
#include <gloo/allreduce_ring.h>
#include <gloo/allreduce.h>
#include <gloo/rendezvous/context.h>
#include <gloo/rendezvous/file_store.h>
#include <gloo/transport/tcp/device.h>
#include <chrono>
#include <cstdio>
#include <vector>
#include <cstdlib>
int main(int argc,char**argv){int r=atoi(argv[1]),n=atoi(argv[2]);
 gloo::transport::tcp::attr a; a.hostname="127.0.0.1"; auto dev=gloo::transport::tcp::CreateDevice(a);
 gloo::rendezvous::FileStore store(argv[3]); auto ctx=std::make_shared<gloo::rendezvous::Context>(r,n); ctx->connectFullMesh(store,dev);
 long sizes[]={1<<10,1<<16,1<<20,1<<22,11<<20};
 for(long c:sizes){std::vector<float> b(c,1.f);
  auto run=[&]{gloo::AllreduceOptions o(ctx); o.setOutput(b.data(),c); o.setReduceFunction(static_cast<void(*)(void*,const void*,const void*,size_t)>(&gloo::sum<float>)); gloo::allreduce(o);};
  for(int w=0;w<3;w++)run(); int reps=c>(1<<20)?20:200; auto t0=std::chrono::steady_clock::now(); for(int i=0;i<reps;i++)run();
  double t=std::chrono::duration<double>(std::chrono::steady_clock::now()-t0).count()/reps;
  if(r==0)printf("gloo allreduce %ld floats: %.3f ms, %.2f GB/s\n",c,t*1e3,c*4/t/1e9);}
}
