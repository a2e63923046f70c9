import sys, numpy as np
sys.path.insert(0, __import__('os').path.dirname(__file__))
from load import load
d=sys.argv[1]
levels,cands,rew=load(d)
N=len(cands)
X=np.concatenate([np.eye(n)[cands[:,j]] for j,n in enumerate(levels)],axis=1)
X=np.concatenate([np.ones((N,1)),X],axis=1)
def held(s):
    o=1-s; v=rew[:,o].copy(); v[np.isnan(v)]=np.nanmin(rew[:,o]); return v
# additive model fit quality on full table
for s in (0,1):
    y=rew[:,s]; m=~np.isnan(y)
    w=np.linalg.lstsq(X[m],y[m],rcond=None)[0]; p=X@w
    r2=1-np.var(y[m]-p[m])/np.var(y[m])
    h=held(s); mm=~np.isnan(rew[:,1-s])&m
    print(f"seed{s}: additive R2 {r2:.3f}; corr(additive pred, other seed) {np.corrcoef(p[mm],rew[mm,1-s])[0,1]:.3f}; corr(obs, other) {np.corrcoef(y[mm],rew[mm,1-s])[0,1]:.3f}")
    # main effects
    for j,n in enumerate(levels):
        means=[np.nanmean(np.where(cands[:,j]==k,y,np.nan)) for k in range(n)]
        print('  level',j,np.round(means,3))
def ridge_pred(idx,y,lam=1.0):
    A=X[idx]; w=np.linalg.solve(A.T@A+lam*np.eye(X.shape[1]),A.T@y); return X@w, w, A
def obs_val(i,s):
    v=rew[i,s]; return v
def run(strategy,pick,k,seed,s):
    rng=np.random.default_rng(seed)
    seen=strategy(rng,k,s)
    ys=np.array([rew[i,s] for i in seen])
    floor=np.nanmin(ys) if np.any(~np.isnan(ys)) else -10
    ys2=np.where(np.isnan(ys),floor-0.5,ys)
    if pick=='best': c=seen[int(np.argmax(np.where(np.isnan(ys),-np.inf,ys)))]
    else:
        lam=float(pick.split(':')[1])
        p,_,_=ridge_pred(np.array(seen),ys2,lam)
        acc=[i for i,y in zip(seen,ys) if not np.isnan(y)]
        sc={i:p[i] for i in acc}
        c=max(sc,key=sc.get)
    h=held(s); return h.max()-h[c]
def random_s(rng,k,s): return list(rng.choice(N,k,replace=False))
def ts_s(rng,k,s,start=10,lam=1.0,noise=None):
    seen=list(rng.choice(N,start,replace=False))
    while len(seen)<k:
        ys=np.array([rew[i,s] for i in seen]); fl=np.nanmin(ys) if np.any(~np.isnan(ys)) else -3
        ys=np.where(np.isnan(ys),fl-0.5,ys)
        A=X[seen]; sig2=np.var(ys)*0.5+1e-6
        P=A.T@A/sig2+lam*np.eye(X.shape[1])/np.var(ys+1e-9)
        cov=np.linalg.inv(P); mu=cov@(A.T@(ys-ys.mean()))/sig2
        w=rng.multivariate_normal(mu,cov)
        sc=X@w; sc[seen]=-np.inf
        seen.append(int(np.argmax(sc)))
    return seen
K=int(sys.argv[2]) if len(sys.argv)>2 else 40
R=200
for name,strat in [('random',random_s),('ts',ts_s)]:
    for pick in ['best','model:1','model:5']:
        rs=[run(strat,pick,K,r,r%2) for r in range(R)]
        print(f"{name:8s} {pick:8s} k={K} regret {np.mean(rs):.4f} ± {1.96*np.std(rs)/np.sqrt(R):.4f}")
# oracle-ish: additive fit on whole observed table
for s in (0,1):
    y=rew[:,s]; m=~np.isnan(y); h=held(s)
    w=np.linalg.lstsq(X[m],y[m],rcond=None)[0]; p=X@w
    p2=np.where(m,p,-np.inf)
    print(f"seed {s}: full-table additive pick regret {h.max()-h[np.argmax(p2)]:.4f}; best observed regret {h.max()-h[np.nanargmax(np.where(m,y,-np.inf))]:.4f}")
rr=np.array([run(random_s,'best',K,r,r%2) for r in range(R)])
print('random regret quantiles',np.round(np.quantile(rr,[0.1,0.25,0.5,0.75,0.9]),3))
for pick in ['model:1']:
    tt=np.array([run(ts_s,pick,K,r,r%2) for r in range(R)])
    print('ts quantiles',np.round(np.quantile(tt,[0.1,0.25,0.5,0.75,0.9]),3), 'wins',np.mean(tt<rr),'ties',np.mean(tt==rr))
