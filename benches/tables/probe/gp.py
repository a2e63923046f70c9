import sys, numpy as np
sys.path.insert(0, __import__('os').path.dirname(__file__))
from load import load
d=sys.argv[1]; K=40; R=int(sys.argv[2]) if len(sys.argv)>2 else 100
levels,cands,rew=load(d); N=len(cands); L=len(levels)
H=(cands[:,None,:]!=cands[None,:,:]).sum(-1)  # hamming NxN
def held(s):
    o=1-s; v=rew[:,o].copy(); v[np.isnan(v)]=np.nanmin(rew[:,o]); return v
# local structure: corr of reward with mean of hamming-1 neighbours
for s in (0,1):
    y=rew[:,s]; m=~np.isnan(y)
    nb=[np.nanmean(np.where((H[i]==1),y,np.nan)) for i in range(N)]
    nb=np.array(nb); mm=m&~np.isnan(nb)
    top=np.argsort(-np.where(m,y,-np.inf))[:10]
    print(f"seed {s}: corr(y, mean of H1 neighbours) {np.corrcoef(y[mm],nb[mm])[0,1]:.3f}; top-10 pairwise hamming mean {H[np.ix_(top,top)][np.triu_indices(10,1)].mean():.2f} (random pair {L*np.mean([1-1/n for n in levels]):.2f})")
def gp_ts(rng,s,ell,start=10,noise=0.3):
    seen=list(rng.choice(N,start,replace=False))
    while len(seen)<K:
        ys=np.array([rew[i,s] for i in seen]); fl=np.nanmin(ys) if np.any(~np.isnan(ys)) else -3
        ys=np.where(np.isnan(ys),fl,ys); mu0=ys.mean(); sd=ys.std()+1e-9; z=(ys-mu0)/sd
        Kss=np.exp(-H[np.ix_(seen,seen)]/ell); Kxs=np.exp(-H[:,seen]/ell)
        A=np.linalg.inv(Kss+noise*np.eye(len(seen)))
        mu=Kxs@A@z; var=np.clip(1-np.einsum('ij,jk,ik->i',Kxs,A,Kxs),1e-9,None)
        sc=mu+np.sqrt(var)*rng.standard_normal(N)  # independent TS approx
        sc[seen]=-np.inf; seen.append(int(np.argmax(sc)))
    ys=np.array([rew[i,s] for i in seen]); c=seen[int(np.nanargmax(np.where(np.isnan(ys),-np.inf,ys)))]
    h=held(s); return h.max()-h[c]
def rnd(rng,s):
    sel=rng.choice(N,K,replace=False); y=np.where(np.isnan(rew[sel,s]),-np.inf,rew[sel,s]); c=sel[np.argmax(y)]
    h=held(s); return h.max()-h[c]
rr=np.array([rnd(np.random.default_rng(10_000+r),r%2) for r in range(R)])
print('random',rr.mean().round(4))
for ell in (1.0,2.0):
  for noise in (0.1,0.5):
    g=np.array([gp_ts(np.random.default_rng(r),r%2,ell,noise=noise) for r in range(R)])
    print(f"gp ell {ell} noise {noise}: regret {g.mean():.4f} ± {1.96*g.std()/np.sqrt(R):.4f}, wins {np.mean(g<rr):.2f} ties {np.mean(g==rr):.2f}")
