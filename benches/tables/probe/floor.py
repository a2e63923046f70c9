import sys, numpy as np
sys.path.insert(0, __import__('os').path.dirname(__file__))
from load import load
for d in sys.argv[1:]:
    levels,cands,rew=load(d); N=len(cands)
    out=[]
    for s in (0,1):
        o=1-s; h=rew[:,o].copy(); h[np.isnan(h)]=np.nanmin(rew[:,o])
        y=np.where(np.isnan(rew[:,s]),-np.inf,rew[:,s])
        floor=h.max()-h[np.argmax(y)]
        # exact P(random@40 regret > floor): the pick is the best observed among 40 random; regret > floor iff pick's held-out < h[argmax]
        rng=np.random.default_rng(0); wins=0; T=20000
        for t in range(T):
            sel=rng.choice(N,40,replace=False); c=sel[np.argmax(y[sel])]
            wins+= (h.max()-h[c]) > floor
        ties=0
        out.append(f"seed {s}: floor {floor:.4f}, P(random@40 worse than the floor) {wins/T:.3f}")
    print(d.split('/')[-1], '; '.join(out))
