import json, itertools, numpy as np
def load(d):
    g=json.load(open(d+'/seed-0/grid.json'))
    levels=g['levels']; reps=g['representatives']
    cands=list(itertools.product(*[range(n) for n in levels]))  # first level most significant = GridSearch::index
    idx={c:i for i,c in enumerate(cands)}
    rew=np.full((len(cands),2),np.nan)
    for s in (0,1):
        by={}
        for l in open(f'{d}/seed-{s}/trials.jsonl'):
            t=json.loads(l); r=t['outcome']['reward']
            by[idx[tuple(t['choices'])]]= np.nan if r is None else r
        for i in range(len(cands)):
            rew[i,s]=by[reps[i]]
    return levels,np.array(cands),rew
if __name__=='__main__':
    import sys
    levels,cands,rew=load(sys.argv[1])
    print(levels,len(cands),np.isnan(rew).sum(0))
